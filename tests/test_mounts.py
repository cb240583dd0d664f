"""_mounts.py: the mount table read from a /proc/mounts we write, and the checks every Drive backend shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from colabkit import _mounts
from colabkit.errors import MountError

_TABLE = r"""sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0
tmpfs /content tmpfs rw,nosuid,nodev 0 0
drive /content/drive fuse.drive rw,nosuid,nodev,relatime,user_id=0,group_id=0 0 0
bindfs /tmp/My\040Drive\011x\134y fuse.google-drive-ocamlfuse ro,nosuid,nodev 0 0
drive /content/drive fuse.drive ro,nosuid,nodev,relatime,user_id=0,group_id=0 0 0
bindfs /content/drive/Shareddrives\040(lab) fuse.bindfs rw 0 0
short line
"""


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = tmp_path / "mounts"
    path.write_text(_TABLE)
    monkeypatch.setattr(_mounts, "_MOUNTS", str(path))
    return path


def test_unescape_turns_octal_escapes_back_into_characters():
    assert _mounts._unescape(r"/tmp/My\040Drive\011x\134y\012z") == "/tmp/My Drive\tx\\y\nz"
    assert _mounts._unescape("/plain/path") == "/plain/path"


def test_table_parses_every_line_with_octal_escapes(table):
    entries = _mounts.table()
    assert [e.point for e in entries] == [
        Path("/sys"),
        Path("/"),
        Path("/content"),
        Path("/content/drive"),
        Path("/tmp/My Drive\tx\\y"),
        Path("/content/drive"),
        Path("/content/drive/Shareddrives (lab)"),
    ]  # the short line is skipped
    ocaml = entries[4]
    assert ocaml == _mounts.MountEntry(
        Path("/tmp/My Drive\tx\\y"), _mounts.OCAMLFUSE_FSTYPE, frozenset({"ro", "nosuid", "nodev"})
    )
    assert ocaml.readonly and not entries[3].readonly


def test_entry_is_the_topmost_mount_at_exactly_that_point(table):
    top = _mounts.entry(Path("/content/drive"))
    assert top is not None and top.fstype == _mounts.DRIVE_FSTYPE
    assert top.readonly and "user_id=0" in top.options  # the later line covers the earlier one
    escaped = _mounts.entry(Path("/tmp/My Drive\tx\\y"))
    assert escaped is not None and escaped.fstype == _mounts.OCAMLFUSE_FSTYPE
    assert _mounts.entry(Path("/tmp/My Drive")) is None
    assert _mounts.entry(Path("/content/drive/MyDrive")) is None  # inside a mount is not a mount


def test_unreadable_table_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(_mounts, "_MOUNTS", str(tmp_path / "missing"))
    assert _mounts.table() == []
    assert _mounts.entry(Path("/content/drive")) is None
    assert _mounts.mountpoint_of(Path("/content/drive/MyDrive")) is None


def test_mountpoint_of_picks_the_deepest_mount(table):
    assert _mounts.mountpoint_of(Path("/content/drive/MyDrive/test/runs")) == Path("/content/drive")
    assert _mounts.mountpoint_of(Path("/content/drive")) == Path("/content/drive")
    assert _mounts.mountpoint_of(Path("/content/drive/Shareddrives (lab)/exp")) == Path(
        "/content/drive/Shareddrives (lab)"
    )
    assert _mounts.mountpoint_of(Path("/content/drive2/x")) == Path("/content")  # whole names, not prefixes
    assert _mounts.mountpoint_of(Path("/content/x")) == Path("/content")
    assert _mounts.mountpoint_of(Path("/tmp/My Drive\tx\\y/a")) == Path("/tmp/My Drive\tx\\y")
    assert _mounts.mountpoint_of(Path("/home/user")) == Path("/")


def test_a_live_folder_is_not_dead(tmp_path):
    assert not _mounts.is_dead(tmp_path)
    assert not _mounts.is_dead(tmp_path / "missing")  # ENOENT is not a dead FUSE mount


def test_check_readonly_passes_a_match_and_names_the_fix_otherwise(tmp_path):
    _mounts.check_readonly(tmp_path, "drive", True, True)
    _mounts.check_readonly(tmp_path, "drive", False, False)
    with pytest.raises(
        MountError, match="already mounted read-only at .*readonly=False asks for read-write"
    ) as info:
        _mounts.check_readonly(tmp_path, "ocamlfuse", True, False)
    assert info.value.reason == "readonly" and info.value.method == "ocamlfuse"
    assert info.value.hint == (
        "Pass force=True to remount it read-write: colabkit.mount('ocamlfuse', readonly=False, force=True)."
    )


def test_entries_text_and_not_empty(tmp_path):
    point = tmp_path / "point"
    point.mkdir()
    for name in ("f", "e", "d", "c", "b", "a"):
        (point / name).write_text(name)
    assert _mounts.entries_text(point) == "'a', 'b', 'c', 'd', 'e' and 1 more"
    assert _mounts.entries_text(point, limit=6) == "'a', 'b', 'c', 'd', 'e', 'f'"
    assert _mounts.entries_text(tmp_path / "missing") == "(unreadable)"
    assert _mounts.entries_text(None) == ""
    err = _mounts.not_empty(point, "drive", " (why)")
    assert err.reason == "not_empty" and err.method == "drive" and err.mountpoint == str(point)
    assert err.message.endswith("it holds 'a', 'b', 'c', 'd', 'e' and 1 more (why)")
    assert sorted(p.name for p in point.iterdir()) == ["a", "b", "c", "d", "e", "f"]  # nothing moved
