"""A run folder that outlives Drive: the local folder copied to Drive pass by pass (real folders, real child
processes), and through the fake DriveFS (a real bindfs mount) killed mid-run and remounted, or stopped (hung)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from fakes.colabvm import hung_fuse, kill_fuse

import colabkit
from colabkit import _mirror, _mounts


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    remote = tmp_path / "drive" / "runs" / "20260101-120000-train"
    remote.mkdir(parents=True)
    return remote, _mirror.local_dir(remote)


def _summary(folder: Path, **fields: object) -> None:
    (folder / "summary.json").write_text(json.dumps({"status": "running", "script": "train.py", **fields}))


def _drive_copy(remote: Path) -> dict:
    return json.loads((remote / "summary.json").read_text())["copy"]


def test_a_pass_copies_the_folder_verified_by_size_and_the_summary_says_how_far(tmp_path):
    remote, _ = _folders(tmp_path)
    said: list[str] = []
    mirror = _mirror.Mirror.create(remote, say=said.append)
    local = mirror.local
    assert local.parent == tmp_path / "home/.cache/colabkit/runs" and local.name.startswith(remote.name + "-")
    _summary(local)
    (local / "output.log").write_bytes(b"step 1\n")
    (local / "metrics.csv").write_text("t,used\n0,1\n")
    (local / ".framework.json").write_text("{}")  # the child's private report: not for Drive
    (local / ".ending.json").write_text('{"changes": {}}')  # the supervisor's ending: runs() applies it
    assert mirror.sync(10.0) is True
    assert sorted(p.name for p in remote.iterdir()) == [".ending.json", "metrics.csv", "output.log", "summary.json"]
    copy = _drive_copy(remote)
    assert (copy["state"], copy["bytes"], copy["of"], copy["behind"]) == ("complete", 7 + 11 + 15, 7 + 11 + 15, [])
    assert copy["local_dir"] == str(local)
    assert json.loads((remote / "summary.json").read_text())["script"] == "train.py"

    with open(local / "output.log", "ab") as f:  # the log grows: only what is new travels
        f.write(b"step 2\n")
    before = os.stat(remote / "output.log").st_ino
    _summary(local, status="finished")
    assert mirror.sync(10.0) is True
    assert (remote / "output.log").read_bytes() == b"step 1\nstep 2\n"
    assert os.stat(remote / "output.log").st_ino == before  # appended in place, not rewritten
    assert json.loads((remote / "summary.json").read_text())["status"] == "finished"
    assert [p.name for p in remote.iterdir() if ".tmp-" in p.name] == []
    assert said == [] and mirror.passes == 2 and mirror.report()["state"] == "complete"
    mirror.close(remove_local=True)
    assert not local.exists()


def test_tick_never_waits_and_starts_a_pass_only_when_due(tmp_path):
    remote, _ = _folders(tmp_path)
    now = [100.0]
    mirror = _mirror.Mirror.create(remote, every_s=5.0, clock=lambda: now[0], say=lambda text: None)
    (mirror.local / "output.log").write_bytes(b"x")
    mirror.tick(now[0])  # due at once: a pass starts
    first = mirror._child
    assert first is not None
    first.wait(10)
    mirror.tick(now[0])  # collected; the next one is not due for 5 s
    assert mirror._child is None and mirror.passes == 1 and (remote / "output.log").read_bytes() == b"x"
    now[0] += 4.9
    mirror.tick(now[0])
    assert mirror._child is None
    now[0] += 0.2
    mirror.tick(now[0])
    assert mirror._child is not None
    mirror.close(remove_local=False)


def test_a_folder_that_cannot_be_written_is_said_once_and_the_local_folder_stays(tmp_path):
    remote, _ = _folders(tmp_path)
    said: list[str] = []
    mirror = _mirror.Mirror.create(remote, say=said.append)
    (mirror.local / "output.log").write_bytes(b"kept")
    remote.chmod(0o500)
    target = remote / "sub"
    mirror.remote = target  # a folder it cannot create
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the target a file instead
            target = remote.parent / "file"
            target.write_text("")
            mirror.remote = target / "run"
        assert mirror.sync(10.0) is False
        assert mirror.sync(10.0) is False
    finally:
        remote.chmod(0o700)
    assert mirror.state == "error" and mirror.failures == 2
    assert len(said) == 1 and said[0].startswith("colabkit: cannot copy the run folder to Drive ([Errno ")
    assert f"its folder is kept on this VM's disk at {mirror.local}" in said[0]
    assert (mirror.local / "output.log").read_bytes() == b"kept"
    mirror.close(remove_local=True)
    assert mirror.local.exists()  # not complete on Drive: never removed


def test_catch_up_finishes_a_copy_left_behind(tmp_path):
    remote, _ = _folders(tmp_path)
    assert _mirror.catch_up(remote) is None  # no local folder for it on this machine
    mirror = _mirror.Mirror.create(remote, say=lambda text: None)
    _summary(mirror.local, status="finished")
    (mirror.local / "output.log").write_bytes(b"all of it\n")
    mirror.close(remove_local=False)  # the run ended before its last pass
    assert not (remote / "output.log").exists()
    assert _mirror.catch_up(remote) is True
    assert (remote / "output.log").read_bytes() == b"all of it\n"
    assert _drive_copy(remote)["state"] == "complete"
    assert not mirror.local.exists() and _mirror.catch_up(remote) is None  # done once: nothing left to copy


def test_wanted_only_for_folders_on_a_fuse_mount(tmp_path):
    assert _mirror.wanted(tmp_path) is False


# -- through the fake DriveFS -----------------------------------------------------------------------
@pytest.fixture
def on_drive(vm):
    """Drive mounted through the fake DriveFS; a run folder on it and its mirror, remounting through mount()."""
    colabkit.mount()
    remote = vm.mountpoint / "MyDrive/test/runs/20260101-120000-train"
    remote.mkdir(parents=True)
    said: list[str] = []
    remounted: list[object] = []

    def remount() -> object:
        found = colabkit.mount()
        remounted.append(found)
        return found

    mirror = _mirror.Mirror.create(remote, say=said.append, remount=remount, timeout_s=5.0)
    assert _mirror.wanted(remote.parent)
    yield mirror, said, remounted
    mirror.close(remove_local=False)


@pytest.mark.fuse
def test_drive_dying_mid_run_is_said_once_remounted_and_the_copy_catches_up(on_drive, vm):
    mirror, said, remounted = on_drive
    local, remote, remount = mirror.local, mirror.remote, mirror.remount
    _summary(local)
    (local / "output.log").write_bytes(b"".join(b"step %d\n" % i for i in range(100)))
    assert mirror.sync(10.0) is True

    kill_fuse(vm.mountpoint)  # DriveFS dies: [Errno 107] from here on
    with open(local / "output.log", "ab") as f:  # the run goes on writing locally
        f.write(b"".join(b"step %d\n" % i for i in range(100, 200)))
    _summary(local, status="finished")
    assert _mounts.probe(vm.mountpoint).state == "dead"
    mirror.remount = None  # first: a pass alone notices, says so once and keeps the folder
    assert mirror.sync(10.0) is False and mirror.state == "dead"
    assert mirror.sync(10.0) is False
    assert len(said) == 1 and "[Errno 107]" in said[0] and "the run goes on" in said[0]

    mirror.remount = remount
    assert mirror.sync(30.0) is True  # remounted through mount()'s healing path, then caught up
    assert len(remounted) == 1 and _mounts.probe(vm.mountpoint).state == "live"
    expected = b"".join(b"step %d\n" % i for i in range(200))
    assert (remote / "output.log").read_bytes() == expected
    assert (vm.mydrive / "test/runs/20260101-120000-train/output.log").read_bytes() == expected  # on "Drive"
    copy = _drive_copy(remote)
    assert copy["state"] == "complete" and copy["bytes"] == copy["of"] == len(expected)
    assert json.loads((remote / "summary.json").read_text())["status"] == "finished"
    assert len(said) == 2 and said[1].startswith("colabkit: Drive answers again: the run folder on Drive caught up")


@pytest.mark.fuse
def test_a_hung_drive_ends_the_pass_at_its_deadline_and_the_copy_resumes(on_drive, vm):
    mirror, said, _ = on_drive
    local, remote = mirror.local, mirror.remote
    _summary(local)
    (local / "output.log").write_bytes(b"before\n")
    assert mirror.sync(10.0) is True
    with hung_fuse(vm.mountpoint):
        with open(local / "output.log", "ab") as f:
            f.write(b"during\n")
        assert mirror.sync(3.0) is False
        assert mirror.state == "hung" and len(said) == 1 and "Drive does not answer" in said[0]
        # known hung: the final copy asks the mount (a 2 s probe) instead of waiting out its whole timeout
        started = time.monotonic()
        assert mirror.sync(60.0) is False
        assert time.monotonic() - started < 10.0 and len(said) == 1
    assert mirror.sync(10.0) is True
    assert (remote / "output.log").read_bytes() == b"before\nduring\n"
    assert said[-1].startswith("colabkit: Drive answers again")


@pytest.mark.fuse
def test_the_last_copy_does_not_wait_for_a_pass_stuck_in_a_drive_that_just_hung(on_drive, vm):
    """Stop right after Drive hung: a pass is still out, nothing has failed yet; the last copy asks the mount
    (a 2 s probe) instead of waiting for that pass for its whole timeout."""
    mirror, said, _ = on_drive
    local = mirror.local
    _summary(local)
    (local / "output.log").write_bytes(b"before\n")
    assert mirror.sync(10.0) is True
    with hung_fuse(vm.mountpoint):
        with open(local / "output.log", "ab") as f:
            f.write(b"during\n")
        mirror._next = 0.0  # a pass is due: the loop's next turn starts it, and it blocks in the hung mount
        mirror.tick(mirror.clock())
        assert mirror._child is not None and mirror.state == "live"
        started = time.monotonic()
        assert mirror.sync(60.0) is False
        assert time.monotonic() - started < 10.0 and mirror._child is None
    assert mirror.sync(10.0) is True and (mirror.remote / "output.log").read_bytes() == b"before\nduring\n"
