"""_files.py: atomic replace through a tagged temp file, tolerant JSON reads, and clearing abandoned temp files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from colabkit import _files


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if _files.TEMP.match(p.name))


def test_replacing_writes_through_a_temp_sibling(tmp_path):
    target = tmp_path / "model.bin"
    with _files.replacing(target) as f:
        f.write(b"new")
        (temp,) = _temps(tmp_path)  # the bytes go to the temp file first
        m = _files.TEMP.match(temp)
        assert (m.group("final"), m.group("machine"), int(m.group("pid"))) == (
            "model.bin",
            _files.machine_tag(),
            os.getpid(),
        )
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert _temps(tmp_path) == []


def test_replacing_keeps_the_old_content_and_no_temp_file_when_the_block_raises(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="midway"), _files.replacing(target, "w") as f:
        f.write("half of the new")
        raise RuntimeError("midway")
    assert target.read_text() == "old"
    assert sorted(p.name for p in folder.iterdir()) == ["state.json"]

    fresh = folder / "never.json"  # no old content: nothing appears at all
    with pytest.raises(KeyboardInterrupt), _files.replacing(fresh, "w"):
        raise KeyboardInterrupt
    assert sorted(p.name for p in folder.iterdir()) == ["state.json"]


def test_write_json_round_trips_through_read_json(tmp_path):
    path = tmp_path / "summary.json"
    data = {"status": "finished", "peak": 3 * 2**30, "args": ["--epochs", "3"], "nested": {"ü": None}}
    _files.write_json(path, data)
    assert _files.read_json(path) == data
    _files.write_json(path, {"status": "failed"}, indent=None)  # replaces it
    assert _files.read_json(path) == {"status": "failed"}
    assert path.read_text() == '{"status": "failed"}\n'
    assert _temps(tmp_path) == []


def test_write_text_replaces_the_file(tmp_path):
    path = tmp_path / "stamp"
    _files.write_text(path, "one")
    _files.write_text(path, "two")
    assert path.read_text() == "two" and _temps(tmp_path) == []


@pytest.mark.parametrize(
    "content",
    [None, "", "{broken", "[1, 2]", "42", '"text"', "null", b"\xff\xfe{"],
    ids=["missing", "empty", "invalid", "list", "number", "string", "null", "not-utf8"],
)
def test_read_json_is_none_for_missing_invalid_or_non_object_files(tmp_path, content):
    path = tmp_path / "data.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert _files.read_json(path) is None


def test_read_json_of_a_folder_is_none(tmp_path):
    assert _files.read_json(tmp_path) is None


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    return child.pid


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield child.pid
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_remove_abandoned_clears_only_what_nobody_is_writing(tmp_path, live_pid):
    me = _files.machine_tag()
    dead = _dead_pid()
    day_ago = time.time() - _files.FOREIGN_TEMP_AGE_S - 60
    gone = tmp_path / f".ckpt.pkl.tmp-{me}-{dead}-0123abcd"  # its writer died on this machine
    running = tmp_path / f".ckpt.pkl.tmp-{me}-{live_pid}-0123abcd"  # its writer is still at it
    mine = tmp_path / f".ckpt.pkl.tmp-{me}-{os.getpid()}-0123abcd"  # this process, from a write that failed
    # another VM sharing the folder: its writer cannot be asked and may be writing right now
    recent_foreign = tmp_path / f".ckpt.pkl.tmp-othervm_0badf00d-{dead}-0123abcd"
    old_foreign = tmp_path / f".ckpt.pkl.tmp-othervm_0badf00d-{dead}-4567abcd"
    recent_legacy = tmp_path / f".ckpt.pkl.tmp-{dead}-89abcdef"  # before temp names held the machine
    old_legacy = tmp_path / f".best.pkl.tmp-{dead}-89abcdef"
    user_file = tmp_path / "ckpt.pkl"
    for p in (gone, running, mine, recent_foreign, old_foreign, recent_legacy, old_legacy, user_file):
        p.write_bytes(b"half")
    for p in (old_foreign, old_legacy):
        os.utime(p, (day_ago, day_ago))

    with _files.replacing(tmp_path / "best.pkl") as being_written:  # this process, writing right now
        being_written.write(b"half")
        _files.remove_abandoned(tmp_path)
        assert Path(being_written.name).exists()
    assert (tmp_path / "best.pkl").read_bytes() == b"half"
    assert not gone.exists() and not mine.exists() and not old_foreign.exists() and not old_legacy.exists()
    assert running.exists() and recent_foreign.exists() and recent_legacy.exists()
    assert user_file.exists()


def test_remove_abandoned_of_one_final_name_leaves_the_others(tmp_path):
    me = _files.machine_tag()
    dead = _dead_pid()
    archive = tmp_path / f".images.tar.tmp-{me}-{dead}-0123abcd"
    other = tmp_path / f".labels.json.tmp-{me}-{dead}-0123abcd"
    for p in (archive, other):
        p.write_bytes(b"half")
    _files.remove_abandoned(tmp_path, "images.tar")
    assert not archive.exists() and other.exists()


def test_remove_abandoned_of_a_missing_folder_does_nothing(tmp_path):
    _files.remove_abandoned(tmp_path / "nowhere")


def test_abandoned_counts_another_machines_age_from_now(tmp_path):
    path = tmp_path / ".x.tmp-othervm_0badf00d-1-0123abcd"
    path.write_bytes(b"half")
    mtime = path.stat().st_mtime
    assert not _files.abandoned(path, "othervm_0badf00d", 1, now=mtime + _files.FOREIGN_TEMP_AGE_S - 1)
    assert _files.abandoned(path, "othervm_0badf00d", 1, now=mtime + _files.FOREIGN_TEMP_AGE_S + 1)
    assert not _files.abandoned(tmp_path / "vanished", "othervm_0badf00d", 1)  # gone already: nothing to do
