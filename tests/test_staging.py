"""stage(): real files through a real FUSE mount (bindfs), no-op repeats, kills midway, disk space, archives."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import child_env, child_process
from fakes.colabvm import bindfs

from colabkit import _files, _stage
from colabkit.errors import StageError

N_FILES = 2000


def _make_dataset(folder: Path, n: int = N_FILES) -> None:
    for i in range(n):
        sub = folder / f"class{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:05d}.bin").write_bytes(i.to_bytes(4, "little") * 64)
    (folder / "empty").mkdir()


def _contents(folder: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if rel in (_stage.STAMP, _stage.FILES):
            continue
        out[rel] = path.read_bytes() if path.is_file() else None
    return out


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(backing folder, the same folder seen through a FUSE mount)."""
    backing = tmp_path / "backing"
    backing.mkdir()
    with bindfs(backing, tmp_path / "mnt") as mnt:
        yield backing, mnt


@pytest.mark.fuse
def test_folder_is_packed_once_then_extracted_and_repeat_is_a_no_op(drive, tmp_path):
    backing, mnt = drive
    _make_dataset(backing / "images")
    dest = tmp_path / "local" / "images"
    assert _stage.stage(mnt / "images", dest) == dest
    assert _contents(dest) == _contents(backing / "images")
    assert len([p for p in dest.rglob("*.bin")]) == N_FILES
    archive = backing / f"images{_stage.ARCHIVE_SUFFIX}"
    assert archive.is_file() and (backing / f"images{_stage.INDEX_SUFFIX}").is_file()

    before = (dest.stat().st_ino, (dest / _stage.STAMP).stat().st_mtime_ns, archive.stat().st_mtime_ns)
    assert _stage.stage(mnt / "images", dest) == dest
    after = (dest.stat().st_ino, (dest / _stage.STAMP).stat().st_mtime_ns, archive.stat().st_mtime_ns)
    assert after == before  # nothing was packed, copied or renamed
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.fuse
def test_archive_is_refreshed_when_the_folder_changes(drive, tmp_path):
    backing, mnt = drive
    _make_dataset(backing / "images", n=50)
    dest = tmp_path / "local" / "images"
    _stage.stage(mnt / "images", dest)
    archive_mtime = (backing / f"images{_stage.ARCHIVE_SUFFIX}").stat().st_mtime_ns

    (backing / "images" / "class3" / "img00003.bin").write_bytes(b"changed")
    (backing / "images" / "new.txt").write_text("new file")
    (backing / "images" / "class1" / "img00001.bin").unlink()
    _stage.stage(mnt / "images", dest)
    assert _contents(dest) == _contents(backing / "images")
    assert (dest / "class3" / "img00003.bin").read_bytes() == b"changed"
    assert not (dest / "class1" / "img00001.bin").exists()
    assert (backing / f"images{_stage.ARCHIVE_SUFFIX}").stat().st_mtime_ns != archive_mtime


@pytest.mark.fuse
def test_readonly_drive_falls_back_to_a_direct_copy(tmp_path):
    backing = tmp_path / "backing"
    _make_dataset(backing / "images", n=200)
    with bindfs(backing, tmp_path / "ro", "-r") as ro:
        dest = _stage.stage(ro / "images", tmp_path / "local" / "images")
        assert _contents(dest) == _contents(backing / "images")
    assert not (backing / f"images{_stage.ARCHIVE_SUFFIX}").exists()


_KILLED_STAGE = textwrap.dedent(
    """
    import sys, threading
    from colabkit import _extract, _stage

    real_write = _extract._write_file
    count = 0
    lock = threading.Lock()

    def write_file(*args):
        global count
        with lock:
            count += 1
            if count == 500:  # a quarter of the way: say so, then hang (holding the others) until killed
                print("midway", flush=True)
                sys.stdin.read()
        return real_write(*args)

    _extract._write_file = write_file
    _stage.stage(sys.argv[1], sys.argv[2])
    print("finished", flush=True)
    """
)


@pytest.mark.fuse
def test_staging_killed_midway_leaves_no_destination_and_next_call_completes(drive, tmp_path):
    backing, mnt = drive
    _make_dataset(backing / "images")
    script = tmp_path / "killed_stage.py"
    script.write_text(_KILLED_STAGE)
    dest = tmp_path / "local" / "images"
    args = [sys.executable, str(script), str(mnt / "images"), str(dest)]
    with child_process(args, env=child_env()) as child:
        assert child.stdout.readline().strip() == "midway"
        partial = [p for p in dest.parent.iterdir() if _stage._PARTIAL in p.name]
        assert len(partial) == 1 and any(partial[0].rglob("*.bin"))  # half-done, hidden
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    assert not dest.exists()  # a partial copy never counts

    assert _stage.stage(mnt / "images", dest) == dest
    assert _contents(dest) == _contents(backing / "images")
    assert [p.name for p in dest.parent.iterdir()] == ["images"]  # the dead child's leftovers are gone


def test_not_enough_disk_is_refused_before_copying(tmp_path, monkeypatch):
    src = tmp_path / "images"
    _make_dataset(src, n=100)
    monkeypatch.setattr(_stage, "_disk_free", lambda path: 10 * 2**20)
    dest = tmp_path / "local" / "images"
    with pytest.raises(StageError, match=r"Not enough local disk to stage .*images: it needs 25\.0 KiB, .* has 10\.0 MiB free") as info:
        _stage.stage(src, dest)
    assert info.value.needed_bytes == 100 * 256
    assert info.value.free_bytes == 10 * 2**20
    assert info.value.hint.startswith("Free at least 54.0 MiB on the VM")
    assert "pass dest= on a disk with more room" in info.value.hint
    assert not dest.exists()
    assert not (tmp_path / f"images{_stage.ARCHIVE_SUFFIX}").exists()  # nothing written to Drive either


def _zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _tar(path: Path, members: dict[str, bytes], mode: str = "w", links: dict[str, str] | None = None) -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)


MEMBERS = {"train/a.txt": b"alpha", "train/b.txt": b"beta", "labels.csv": b"x,y\n"}


@pytest.mark.parametrize(("filename", "mode"), [("ds.tar", "w"), ("ds.tar.gz", "w:gz"), ("ds.tgz", "w:gz"), ("ds.zip", None)])
def test_archive_sources_are_extracted_directly(tmp_path, filename, mode):
    src = tmp_path / filename
    _zip(src, MEMBERS) if mode is None else _tar(src, MEMBERS, mode)
    dest = _stage.stage(src, tmp_path / "local" / "ds")
    assert {k: v for k, v in _contents(dest).items() if v is not None} == MEMBERS
    stamp_mtime = (dest / _stage.STAMP).stat().st_mtime_ns
    assert _stage.stage(src, tmp_path / "local" / "ds") == dest
    assert (dest / _stage.STAMP).stat().st_mtime_ns == stamp_mtime


@pytest.mark.parametrize(
    ("filename", "builder", "bad"),
    [
        ("evil.zip", lambda p: _zip(p, {"ok.txt": b"1", "../evil.txt": b"2"}), "'../evil.txt'"),
        ("evil.tar", lambda p: _tar(p, {"ok.txt": b"1", "../evil.txt": b"2"}), "'../evil.txt'"),
        ("abs.tar", lambda p: _tar(p, {"/tmp/evil.txt": b"2"}), "'/tmp/evil.txt'"),
        ("link.tar", lambda p: _tar(p, {}, links={"etc": "/etc"}), "'etc -> /etc'"),
        ("up.tar.gz", lambda p: _tar(p, {}, "w:gz", links={"a/up": "../../x"}), "'a/up -> ../../x'"),
    ],
)
def test_members_escaping_the_destination_are_refused(tmp_path, filename, builder, bad):
    src = tmp_path / filename
    builder(src)
    dest = tmp_path / "local" / "ds"
    with pytest.raises(StageError, match="would be written outside the destination") as info:
        _stage.stage(src, dest)
    assert bad in info.value.message
    assert "Only stage archives you trust" in info.value.hint
    assert not dest.exists() and not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "local").iterdir()) == []  # the temp folder is gone too


def test_plain_file_is_copied(tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(b"w" * 1000)
    dest = _stage.stage(src, tmp_path / "local" / "weights")
    assert (dest / "weights.bin").read_bytes() == b"w" * 1000


def test_missing_source_and_foreign_destination(tmp_path):
    with pytest.raises(StageError, match=r"Nothing to stage: .*nowhere does not exist") as info:
        _stage.stage(tmp_path / "nowhere")
    assert "mount Drive first" in info.value.hint
    src = tmp_path / "ds"
    _make_dataset(src, n=3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(StageError, match="was not made by colabkit.stage\\(\\); refusing to replace it"):
        _stage.stage(src, mine)
    assert (mine / "thesis.tex").read_text() == "keep me"


def test_default_destination_off_and_on_colab(tmp_path, monkeypatch):
    src = tmp_path / "ds.zip"
    _zip(src, MEMBERS)
    assert _stage.stage(src) == tmp_path / "home" / ".cache" / "colabkit" / "data" / "ds"
    monkeypatch.setenv("COLABKIT_CACHE", str(tmp_path / "cache"))
    assert _stage.stage(src) == tmp_path / "cache" / "data" / "ds"
    vm = tmp_path / "vm"
    (vm / "var" / "colab").mkdir(parents=True)
    (vm / "var" / "colab" / "hostname").write_text("colab-vm\n")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(vm))
    assert _stage.stage(src) == vm / "content" / "data" / "ds"


def test_progress_bar_only_when_someone_watches(tmp_path, monkeypatch, capsys):
    src = tmp_path / "ds.zip"
    _zip(src, MEMBERS)
    _stage.stage(src, tmp_path / "a")  # COLABKIT_DISPLAY=plain: no bar
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("COLABKIT_DISPLAY", "terminal")
    _stage.stage(src, tmp_path / "b")
    assert "extract ds.zip" in capsys.readouterr().out
    _stage.stage(src, tmp_path / "c", progress=False)
    assert capsys.readouterr().out == ""


def test_restaging_refuses_to_delete_files_added_to_the_staged_folder(tmp_path):
    src = tmp_path / "ds"
    _make_dataset(src, n=3)
    dest = tmp_path / "local" / "ds"
    _stage.stage(src, dest)
    (dest / "notes.txt").write_text("my notes")
    (dest / "mine").mkdir()
    (dest / "mine" / "a.txt").write_text("a")
    (dest / "class0" / "extra.bin").write_bytes(b"x")
    assert _stage.stage(src, dest) == dest  # source unchanged: nothing to do, nothing touched
    assert (dest / "notes.txt").read_text() == "my notes"

    (src / "class1" / "img00001.bin").write_bytes(b"changed")
    with pytest.raises(StageError, match="holds files stage\\(\\) did not put there") as info:
        _stage.stage(src, dest)
    assert info.value.message == (
        f"{dest} must be re-staged because {src} changed, but it holds files stage() did not put there: "
        "'class0/extra.bin', 'mine/', 'notes.txt'; refusing to delete them"
    )
    assert info.value.hint == (
        f"Move them out of {dest}, or pass another dest=, or pass overwrite=True to replace the folder and delete them."
    )
    assert (dest / "notes.txt").read_text() == "my notes" and (dest / "mine" / "a.txt").exists()
    assert (dest / "class1" / "img00001.bin").read_bytes() != b"changed"  # the old copy, untouched

    for i in range(5):
        (dest / f"more{i}.txt").write_text("x")
    with pytest.raises(StageError, match="'mine/', 'more0.txt', 'more1.txt', 'more2.txt' and 3 more; refusing"):
        _stage.stage(src, dest)

    assert _stage.stage(src, dest, overwrite=True) == dest
    assert _contents(dest) == _contents(src)
    assert [p.name for p in dest.parent.iterdir()] == ["ds"]

    (dest / _stage.FILES).unlink()  # as staged by a version that kept no list
    (src / "class1" / "img00001.bin").write_bytes(b"changed again")
    with pytest.raises(StageError, match="staged by an older colabkit that did not record its files") as info:
        _stage.stage(src, dest)
    assert info.value.hint.startswith(f"Move anything you added out of {dest} and pass overwrite=True")


def test_restaging_without_added_files_replaces_and_overwrite_never_touches_foreign_folders(tmp_path):
    src = tmp_path / "ds.zip"
    _zip(src, MEMBERS)
    dest = _stage.stage(src, tmp_path / "local" / "ds")
    recorded = json.loads((dest / _stage.FILES).read_text())
    assert recorded["schema"] == 2
    assert [(e[0], e[1]) for e in recorded["entries"]] == [
        ("labels.csv", 4), ("train/", -1), ("train/a.txt", 5), ("train/b.txt", 4)
    ]
    _zip(src, {"labels.csv": b"new"})
    os.utime(src, ns=(time.time_ns() + 10**9,) * 2)
    assert _stage.stage(src, dest) == dest
    assert {k: v for k, v in _contents(dest).items() if v is not None} == {"labels.csv": b"new"}

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(StageError, match="was not made by colabkit.stage"):
        _stage.stage(src, mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "keep me"


def test_leftovers_of_this_machine_go_when_their_stager_is_dead(tmp_path):
    src = tmp_path / "images"
    _make_dataset(src, n=5)
    dest = tmp_path / "local" / "images"
    dest.parent.mkdir()
    me = _files.machine_tag()
    dead = _dead_pid()
    partial = dest.with_name(f".images{_stage._PARTIAL}{me}-{dead}")
    live = dest.with_name(f".images{_stage._PARTIAL}{me}-{os.getppid()}")
    archive_temp = tmp_path / f".images{_stage.ARCHIVE_SUFFIX}.tmp-{me}-{dead}-0123abcd"
    for p in (partial, live):
        p.mkdir()
        (p / "half.bin").write_bytes(b"half")
    archive_temp.write_bytes(b"half")
    _stage.stage(src, dest)
    assert not partial.exists() and not archive_temp.exists()
    assert live.exists()


def test_leftovers_of_another_machine_go_only_after_a_day(tmp_path):
    """Source and destination on a Drive folder two VMs share: the other VM may be staging right now."""
    src = tmp_path / "images"
    _make_dataset(src, n=5)
    dest = tmp_path / "local" / "images"
    dest.parent.mkdir()
    dead = _dead_pid()
    fresh = [
        dest.with_name(f".images{_stage._PARTIAL}othervm_0badf00d-{dead}"),
        dest.with_name(f".images{_stage._OLD}{dead}"),  # written before names held the machine
        tmp_path / f".images{_stage.ARCHIVE_SUFFIX}.tmp-othervm_0badf00d-{dead}-0123abcd",
        tmp_path / f".images{_stage.INDEX_SUFFIX}.tmp-othervm_0badf00d-{dead}-0123abcd",
    ]
    stale = [p.with_name(p.name + "0") for p in fresh]  # another pid (or random part), a day old
    for p in fresh + stale:
        if "partial" in p.name or "old" in p.name:
            p.mkdir()
        else:
            p.write_bytes(b"half")
    day_ago = time.time() - _files.FOREIGN_TEMP_AGE_S - 60
    for p in stale:
        os.utime(p, (day_ago, day_ago))
    _stage.stage(src, dest)
    assert [p.name for p in fresh if not p.exists()] == []
    assert [p.name for p in stale if p.exists()] == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=10)
    return child.pid
