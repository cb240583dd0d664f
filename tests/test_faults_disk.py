"""run() when the run folder fails under it: a real small tmpfs that fills up, a real FUSE mount (bindfs) whose
process is killed, a run folder deleted mid-run, and folders that are unusable before the script starts.

Each test states the promise it holds in its docstring.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fakes.colabvm import mount_table, unmount

import colabkit
from colabkit import _files, _history, _mirror, _run, _summary
from colabkit._format import format_bytes
from colabkit._spec import RunSpec
from colabkit._summary import RunSummary
from colabkit.errors import CheckpointError, ColabkitError, MountError, RunFailed

LINES = 17_000


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real 4 MiB tmpfs under this test's folder, unmounted afterwards whatever happened."""
    point = tmp_path / "disk"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
    assert str(point) not in mount_table()


def fill(disk: Path) -> Path:
    """Write a file on ``disk`` until it has no byte left; the file is returned so the space can be freed."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0")
    with pytest.raises(OSError) as info:  # truly full
        (disk / "probe").write_bytes(b"x" * 8192)
    assert info.value.errno == errno.ENOSPC
    return filler


@pytest.fixture
def drive(tmp_path) -> Iterator[dict]:
    """A real FUSE mount (bindfs, shown as ``fuse.drive``) that a test may kill; unmounted afterwards."""
    backing = tmp_path / "backing"
    point = tmp_path / "drive"
    backing.mkdir()
    point.mkdir()
    subprocess.run(["bindfs", "-o", "fsname=drive,subtype=drive", str(backing), str(point)], check=True, timeout=30)
    state = {"point": point, "backing": backing}

    def kill() -> None:
        """SIGKILL the FUSE process: the mount stays in the table, dead (ENOTCONN), as when DriveFS dies."""
        (daemon,) = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[-1:] == [str(point)]]
        daemon.kill()
        daemon.wait(10)

    def remount() -> None:
        unmount(point)
        subprocess.run(["bindfs", "-o", "fsname=drive,subtype=drive", str(backing), str(point)], check=True, timeout=30)

    state["kill"], state["remount"] = kill, remount
    try:
        yield state
    finally:
        unmount(point)


def talker(folder: Path, lines: int = LINES, exit_status: int = 0) -> list[bytes]:
    """``talk.py``: prints ready, waits for the file ``go``, prints ``lines`` lines, exits; returns what it prints."""
    (folder / "talk.py").write_text(
        "import os, sys, time\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.01)\n"
        f"for i in range({lines}):\n"
        "    print(f'line {i} ' + 'x' * 40, flush=i % 100 == 0)\n"
        f"sys.exit({exit_status})\n"
    )
    return [b"ready\n", *(f"line {i} {'x' * 40}\n".encode() for i in range(lines))]


def go(name: str, observer, **options):
    options.setdefault("monitor", False)
    return _run.execute(RunSpec.build(name, (), observer=observer, **options))


# -- the disk fills ---------------------------------------------------------------------------------------
def test_a_disk_that_fills_mid_run_keeps_the_result_the_output_and_the_summary(proj, small_disk, capsys):
    """Promise: when the run folder's disk fills mid-run, run() still returns the true result; the output
    that could not be written is kept in memory (output.log + unsaved_output is exactly what the script
    printed) and said precisely with the fix for a full disk (free space, not a Drive remount); the
    summary's final state waits where ``runs()`` finds it and is written once there is space again."""
    expected = b"".join(talker(proj))
    filled: list[Path] = []

    def observer(state):
        if "ready" in state.seen and not filled:
            filled.append(fill(small_disk))
            (proj / "go").touch()

    r = go("talk.py", observer, log_dir=small_disk / "runs", monitor=True, interval=0.05)
    assert (r.status, r.returncode) == ("finished", 0)
    log = r.log_path.read_bytes()
    assert r.unsaved_output and log + r.unsaved_output == expected  # nothing lost, nothing twice
    assert r.log_problem.startswith(f"no space left on {small_disk} (0 B free): [Errno 28] No space left on device")
    out = capsys.readouterr().out
    said = f"colabkit: cannot write output.log: no space left on {small_disk} (0 B free)"
    assert out.count(said) == 1
    assert "Free space on that disk (delete old checkpoints or run folders" in out
    assert "mount(force=True)" not in out  # a full local disk needs no remount
    assert "lines not shown; output.log cannot be written (no space left on" in out  # not "see output.log"
    lines = r.unsaved_output.count(b"\n")
    assert f"log: {r.log_path} lacks {format_bytes(len(r.unsaved_output))} of output ({lines} lines)" in out
    # and in a file on another disk, which a terminal user can open too
    assert r.unsaved_path is not None and r.unsaved_path.read_bytes() == r.unsaved_output
    assert r.unsaved_path.parent == _files.cache_dir() / "unsaved" and r.unsaved_path.name == f"{r.log_dir.name}.log"
    assert f"they are in {r.unsaved_path}" in out and "RunResult.unsaved_output" not in out
    assert "colabkit: cannot write summary.json: no space left" in out
    assert r.samples  # the monitor ran on the same full disk
    assert json.loads((r.log_dir / "summary.json").read_text())["status"] == "running"  # the disk is full
    pending = _summary.pending_path(r.log_dir)
    assert json.loads(pending.read_text())["changes"]["status"] == "finished"

    filled[0].unlink()  # space again
    (listed,) = _history.runs(small_disk)
    assert (listed.name, listed.status, listed.returncode) == (r.log_dir.name, "finished", 0)
    assert json.loads((r.log_dir / "summary.json").read_text())["status"] == "finished"  # written back
    assert not pending.exists()


def test_output_kept_while_the_disk_was_full_is_written_when_space_comes_back(proj, small_disk, capsys):
    """Promise: once space comes back during the run, what was kept in memory is written where it belongs:
    output.log ends up byte for byte what the script printed."""
    (proj / "talk.py").write_text(
        "import os, time\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.01)\n"
        "for i in range(3000):\n"
        "    print(f'line {i}', flush=True)\n"
        "print('half', flush=True)\n"
        "while not os.path.exists('go2'):\n"
        "    time.sleep(0.01)\n"
        "for i in range(3000, 6000):\n"
        "    print(f'line {i}')\n"
    )
    expected = b"ready\n" + b"".join(f"line {i}\n".encode() for i in range(3000)) + b"half\n"
    expected += b"".join(f"line {i}\n".encode() for i in range(3000, 6000))
    filled: list[Path] = []

    def observer(state):
        if not filled:
            if "ready" in state.seen:
                filled.append(fill(small_disk))
                (proj / "go").touch()
        elif "half\n" in state.seen and filled[0].exists():
            filled[0].unlink()
        elif not filled[0].exists() and state.output.log.problem is None and not (proj / "go2").exists():
            (proj / "go2").touch()  # the log took what it had kept

    r = go("talk.py", observer, log_dir=small_disk / "runs")
    assert (r.status, r.unsaved_output, r.log_problem) == ("finished", b"", None)
    assert r.log_path.read_bytes() == expected
    out = capsys.readouterr().out
    assert "colabkit: output.log can be written again: the output kept in memory is in it" in out
    assert json.loads((r.log_dir / "summary.json").read_text())["status"] == "finished"


def test_a_disk_already_full_refuses_to_start_the_script(proj, small_disk):
    """Promise: a run folder on a full disk gives one clear ColabkitError with the fix, and the script never starts."""
    (proj / "marker.py").write_text("open('started', 'w').close()\n")
    fill(small_disk)
    with pytest.raises(ColabkitError) as info:
        _run.run("marker.py", monitor=False, log_dir=small_disk / "runs")
    err = info.value
    assert type(err) is ColabkitError
    assert err.message == (
        f"cannot create a run folder in {small_disk / 'runs'}: no space left on {small_disk} (0 B free): "
        "[Errno 28] No space left on device"
    )
    assert err.hint.startswith("Free space on that disk") and err.hint.endswith("or pass log_dir= a folder on another disk")
    assert err.cli_hint.endswith("or pass --log-dir a folder on another disk")
    assert not (proj / "started").exists()
    assert list((small_disk / "runs").iterdir()) == []


# -- Drive dies ------------------------------------------------------------------------------------------------
@pytest.mark.fuse
def test_a_drive_that_dies_mid_run_still_gives_the_true_result(proj, drive, capsys):
    """Promise: when the FUSE process behind the run folder dies mid-run, the run goes on on the VM's disk: a
    failing script still raises RunFailed with its own exit status (never a bare OSError), no output is lost,
    what happened is said once with where the folder is kept, and once Drive is back ``runs()`` completes the
    copy (summary and output.log on Drive, whole)."""
    expected = b"".join(talker(proj, lines=2000, exit_status=3))
    killed: list[bool] = []

    def observer(state):
        if "ready" in state.seen and not killed:
            drive["kill"]()
            killed.append(True)
            (proj / "go").touch()

    with pytest.raises(RunFailed) as info:
        go("talk.py", observer, log_dir=drive["point"] / "runs")
    r = info.value.result
    assert (r.status, r.returncode, info.value.returncode) == ("failed", 3, 3)
    assert (r.log_problem, r.unsaved_output) == (None, b"")  # written on the VM's disk: nothing waits in memory
    out = capsys.readouterr().out
    assert out.count("colabkit: cannot copy the run folder to Drive ([Errno 107]") == 1
    local = _mirror.local_dir(r.log_dir)
    assert f"the run folder is not all on Drive yet: it is kept on this VM's disk at {local}" in out
    assert (local / "output.log").read_bytes().startswith(expected)
    assert "Free space" not in out

    drive["remount"]()
    (listed,) = _history.runs(proj, log_dir=str(drive["point"] / "runs"))  # completes the copy from this machine
    assert (listed.status, listed.returncode, listed.copy) == ("failed", 3, "complete")
    on_drive = drive["backing"] / "runs" / r.log_dir.name
    assert json.loads((on_drive / "summary.json").read_text())["status"] == "failed"
    assert (on_drive / "output.log").read_bytes().startswith(expected)
    assert RunSummary.read(r.log_dir).status == "failed"


@pytest.mark.fuse
def test_log_dir_on_a_dead_drive_refuses_to_start_the_script(proj, drive):
    """Promise: a log_dir on a Drive whose FUSE process died gives one MountError with the remount fix, and
    the script never starts."""
    (proj / "marker.py").write_text("open('started', 'w').close()\n")
    drive["kill"]()
    with pytest.raises(MountError) as info:
        _run.run("marker.py", monitor=False, log_dir=drive["point"] / "runs")
    err = info.value
    assert err.reason == "dead"
    assert err.message == (
        f"Drive at {drive['point']} is dead ([Errno 107] Transport endpoint is not connected), so colabkit cannot "
        f"create the run folder ({drive['point'] / 'runs'})"
    )
    assert err.hint.startswith("Remount with colabkit.mount(force=True), then try again.")
    assert not (proj / "started").exists()


# -- the run folder is deleted ---------------------------------------------------------------------------------
def test_a_run_folder_deleted_mid_run_costs_neither_the_result_nor_the_output(proj, capsys):
    """Promise: a run folder deleted while the script runs changes nothing of the result; what the script
    printed from then on is kept in memory and the loss is said, never raised."""
    printed = talker(proj, lines=3000)
    removed: list[bool] = []

    def observer(state):
        if "ready" in state.seen and not removed:
            shutil.rmtree(state.run_dir)
            removed.append(True)
            (proj / "go").touch()

    r = go("talk.py", observer)
    assert (r.status, r.returncode) == ("finished", 0)
    assert not r.log_dir.exists()
    after = b"".join(printed[1:])
    assert r.unsaved_output.endswith(after) and len(r.unsaved_output) <= len(after) + len(b"ready\n")
    assert r.log_problem == f"{r.log_dir} was deleted: [Errno 2] No such file or directory"
    out = capsys.readouterr().out
    assert "colabkit: cannot write output.log: " + r.log_problem in out
    assert "Leave the run folder in place while the run goes on" in out
    assert "colabkit: cannot write summary.json: " in out
    kept = json.loads(_summary.pending_path(r.log_dir).read_text())
    assert kept["run_dir"] == str(r.log_dir) and kept["changes"]["status"] == "finished"
    _summary.pending_path(r.log_dir).unlink()


def test_a_failing_write_is_said_with_the_fix_of_its_errno(tmp_path):
    """Promise: each errno gets its own advice: free space, remount Drive, keep the folder, a writable folder."""
    from colabkit import _disk

    def fix(code: int) -> str:
        return _disk.problem(OSError(code, os.strerror(code)), tmp_path).fix

    assert fix(errno.ENOSPC).startswith("Free space on that disk")
    assert fix(errno.EDQUOT).startswith("Free space on that disk")
    assert fix(errno.ENOTCONN).startswith("Remount Drive with colabkit.mount(force=True)")
    assert fix(errno.EIO).startswith("Check the disk")  # an I/O error off a FUSE mount is no Drive's
    assert fix(errno.ENOENT).startswith("Leave the run folder in place")
    assert fix(errno.EROFS).startswith("Pass log_dir= a writable folder")
    assert _disk.problem(OSError(errno.EROFS, "Read-only file system"), tmp_path).cli_fix.startswith(
        "Pass --log-dir a writable folder"
    )


def test_a_checkpoint_that_does_not_fit_on_a_local_disk_says_so_and_keeps_the_last_one(small_disk):
    """The fix fits the disk the folder is on: a full local disk is not a Drive problem."""
    folder = small_disk / "ck"
    first = colabkit.save(b"a" * 1_000_000, folder)
    with pytest.raises(CheckpointError) as info:
        colabkit.save(b"b" * 5_000_000, folder)
    err = info.value
    assert err.message.startswith(f"Could not write checkpoint {folder}/ckpt-000002.pkl: no space left on {small_disk}")
    assert f"`df -h {small_disk}` shows what is left" in err.hint and "Drive" not in err.hint
    assert colabkit.latest(folder) == first and sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [first.name]
