"""Drive that heals instead of breaking: real bindfs mounts behind the faithful drive.py fake, killed (SIGKILL,
a dead DriveFS) and stopped (SIGSTOP, a hung one: SIGCONT in teardown), with the kernel's cwd inside Drive."""

from __future__ import annotations

import errno
import importlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import child_env
from fakes.colabvm import holding, hung_fuse, kill_fuse, mount_table, vm_processes

import colabkit
from colabkit import _checkpoint, _drive, _mounts, _pathguard, _stage
from colabkit.errors import MountError

pytestmark = pytest.mark.fuse

FEW_S = 6.0  # "within a few seconds": the probe's deadline (2 s) and the work around it


@pytest.fixture
def opened(vm, tmp_path, monkeypatch):
    """Drive mounted, project "test" open (cwd inside Drive, first on sys.path), as setup("test") leaves it;
    plus a folder of fresh modules at the end of sys.path, for imports that must still work."""
    (vm.mydrive / "test").mkdir()
    (vm.mydrive / "test/projmod.py").write_text("WHERE = 'drive'\n")
    m = colabkit.mount()
    p = colabkit.project("test", install=False)
    lib = tmp_path / "lib"
    lib.mkdir()
    monkeypatch.syspath_prepend(str(lib))
    sys.path.remove(str(lib))
    sys.path.append(str(lib))
    assert os.getcwd() == str(vm.mountpoint / "MyDrive/test") and sys.path[0] == str(p.path)
    yield m, p.path, lib
    for name in [n for n in sys.modules if n.startswith(("fresh_", "projmod"))]:
        del sys.modules[name]


def _fresh(lib: Path) -> str:
    """A module that was never imported, in ``lib`` (not on Drive)."""
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    (lib / f"{name}.py").write_text("OK = True\n")
    importlib.invalidate_caches()
    return name


def _timed(fn):
    _mounts.forget()  # each call asks the mount itself, no verdict carried over
    started = time.monotonic()
    try:
        return fn(), time.monotonic() - started
    except Exception as exc:
        return exc, time.monotonic() - started


# -- the fake is faithful: what drive.py itself does from inside Drive ----------------------------


def test_the_fake_drive_mount_forced_from_inside_drive_kills_it_and_leaves_its_watcher(opened, vm):
    """The control: google.colab.drive.mount(force_remount=True) with the cwd inside Drive, as the real one
    does it (umount -f, then busy; DriveFS killed; the watcher loop's shell keeps the dead mount busy)."""
    from google.colab import drive

    with pytest.raises(ValueError, match="^mount failed$"):
        drive.mount(str(vm.mountpoint), force_remount=True, timeout_ms=20000)
    with pytest.raises(OSError) as info:
        os.statvfs(vm.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    left = holding(vm.sysroot, vm.mountpoint)
    assert left and all(argv[:3] == ["/bin/bash", "--noediting", "-i"] or argv[0] == "sleep" for argv in left.values())


# -- 1. mount(force=True) with the kernel's cwd inside Drive ----------------------------------------


def test_force_remount_from_inside_drive_steps_out_and_back(opened, vm):
    m, project, _ = opened
    (project / "notes.txt").write_text("kept")
    again = colabkit.mount(force=True)
    assert again == m
    assert os.getcwd() == str(project)
    assert Path("notes.txt").read_text() == "kept"  # the cwd is the live new mount
    assert _mounts.health(vm.mountpoint).state == "live"
    assert [c.split()[2] for c in vm.calls() if c.startswith("drive.mount")] == [
        "force_remount=False",
        "force_remount=True",
    ]
    assert holding(vm.sysroot, vm.mountpoint) == {}


def test_force_remount_is_refused_while_another_process_uses_drive(opened, vm):
    _, project, _ = opened
    user = subprocess.Popen(["sleep", "60"], cwd=project)  # a terminal, a training run: cwd on Drive
    try:
        with pytest.raises(MountError) as info:
            colabkit.mount(force=True)
    finally:
        user.kill()
        user.wait()
    err = info.value
    assert err.reason == "busy" and f"pid {user.pid} (sleep 60): cwd {project}" in err.message
    assert "remounting would cut it off under them" in err.message
    assert "then run colabkit.mount(force=True) again" in err.hint
    assert "`colabkit mount --force`" in err.render("cli")
    assert os.getcwd() == str(project)  # stepped back in: the mount was not touched
    assert _mounts.health(vm.mountpoint).state == "live"
    assert len([c for c in vm.calls() if c.startswith("drive.mount")]) == 1


# -- 2. a dead mount is remounted in one call, from any cwd -----------------------------------------


def test_dead_mount_is_remounted_from_inside_with_cwd_and_imports_back(opened, vm):
    m, project, _ = opened
    kill_fuse(vm.mountpoint)
    again = colabkit.mount()
    assert again == m and _mounts.health(vm.mountpoint).state == "live"
    assert os.getcwd() == str(project)
    assert sys.path[0] == str(project)
    (vm.mydrive / "test/projmod2.py").write_text("BACK = True\n")
    assert importlib.import_module("projmod2").BACK
    assert holding(vm.sysroot, vm.mountpoint) == {}


def test_leftover_watcher_of_a_failed_remount_is_ended_and_drive_mounts_from_content(opened, vm, capsys):
    from google.colab import drive

    _, project, _ = opened
    kill_fuse(vm.mountpoint)
    # what an automatic remount from inside the dead mount used to do: drive.py's watcher now holds it
    with pytest.raises(ValueError, match="^mount failed$"):
        drive.mount(str(vm.mountpoint), force_remount=True, timeout_ms=20000)
    leftovers = holding(vm.sysroot, vm.mountpoint)
    assert leftovers
    os.chdir(vm.sysroot / "content")
    bystander = subprocess.Popen(["sleep", "60"], cwd=project)  # not drive.py's: never ended by colabkit
    try:
        m = colabkit.mount()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert m.mountpoint == vm.mountpoint and _mounts.health(vm.mountpoint).state == "live"
    assert not set(leftovers) & set(vm_processes(vm.sysroot))  # the watcher loop and its sleep are gone
    assert os.getcwd() == str(vm.sysroot / "content")  # called from /content: stays there
    assert sys.path[0] == str(project)
    out = capsys.readouterr().out
    assert "was detached; these processes still used it" in out and f"pid {bystander.pid} (sleep 60)" in out


# -- 3. a dead Drive folder on sys.path never breaks other imports ----------------------------------


def test_dead_drive_on_sys_path_is_skipped_by_imports(opened, vm):
    _, _, lib = opened
    kill_fuse(vm.mountpoint)
    name = _fresh(lib)
    assert importlib.import_module(name).OK
    sys.modules.pop("tabnanny", None)
    assert importlib.import_module("tabnanny")
    check = colabkit.doctor()["drive"]
    assert check.status == "fail" and "dead ([Errno 107]" in check.detail


def test_without_the_guard_a_dead_drive_on_sys_path_breaks_every_import(opened, vm, monkeypatch):
    """The control: Python's own finder for the dead entry raises ENOTCONN from every import."""
    _, project, lib = opened
    kill_fuse(vm.mountpoint)
    monkeypatch.setattr(sys, "path_hooks", [h for h in sys.path_hooks if h is not _pathguard._hook])
    monkeypatch.setattr(sys, "path_importer_cache", {})
    name = _fresh(lib)
    with pytest.raises(OSError) as info:
        importlib.import_module(name)
    assert info.value.errno == errno.ENOTCONN
    assert str(project) in sys.path


# -- 4. a hung DriveFS: every probe is bounded, and says it hangs -----------------------------------


def test_a_drive_that_hangs_just_after_it_answered_never_blocks_an_import(opened, vm, monkeypatch, caplog):
    """The entry's "live" verdict is still trusted when DriveFS stops: the lookup in the folder itself has the
    deadline, so the import goes on to the next entry and the entry counts as hung from then on."""
    _, project, lib = opened
    monkeypatch.setattr(_pathguard, "TRUST_S", 600.0)  # the hang starts inside the window, whatever its length
    importlib.import_module("projmod")
    assert _mounts.health(vm.mountpoint).state == "live"
    with hung_fuse(vm.mountpoint):
        time.sleep(1.5)  # past the kernel's 1 s attribute cache: the next look at the folder reaches DriveFS
        name = _fresh(lib)
        started = time.monotonic()
        assert importlib.import_module(name).OK
        took = time.monotonic() - started
        assert took < FEW_S, took
        assert f"imports skip {project} on sys.path: the mount at {vm.mountpoint} is hung" in caplog.text
        assert _mounts.health(vm.mountpoint, max_age=600.0).state == "hung"
        again = _fresh(lib)
        started = time.monotonic()
        assert importlib.import_module(again).OK and time.monotonic() - started < 0.5  # skipped at once now
    assert importlib.import_module("projmod").WHERE == "drive"



def test_a_hung_drive_never_blocks_and_each_call_says_it_hangs(opened, vm, tmp_path):
    m, project, lib = opened
    with hung_fuse(vm.mountpoint):
        found, took = _timed(colabkit.find_mount)
        assert found is None and took < FEW_S, took

        err, took = _timed(colabkit.mount)
        assert isinstance(err, MountError) and err.reason == "hung" and took < FEW_S, (err, took)
        assert "did not reply within 2 s (it hangs)" in err.message
        assert "restart the Drive client with colabkit.mount(force=True)" in err.hint

        err, took = _timed(colabkit.flush)
        assert isinstance(err, MountError) and err.reason == "hung" and took < FEW_S, (err, took)
        assert "its pending writes could not be pushed" in err.message

        err, took = _timed(colabkit.runs)
        assert isinstance(err, MountError) and err.reason == "hung" and took < FEW_S, (err, took)
        assert "colabkit cannot list the runs" in err.message

        report, took = _timed(colabkit.info)
        assert took < FEW_S and "HUNG (no answer within 2 s)" in report.drive, (report, took)

        doctor, took = _timed(colabkit.doctor)
        assert took < FEW_S, took
        assert doctor["drive"].status == "fail" and "hung (the Drive client did not answer" in doctor["drive"].detail
        assert doctor["torch"].status == "warn" and "which is hung" in doctor["torch"].detail

        cli, took = _timed(
            lambda: subprocess.run(
                [sys.executable, "-m", "colabkit", "doctor"],
                capture_output=True, text=True, timeout=60, env=child_env(), cwd=tmp_path,
            )
        )
        assert took < FEW_S + 3, took  # plus the interpreter's start
        assert cli.returncode == 1 and "hung (the Drive client did not answer within 2 s)" in cli.stdout

        name = _fresh(lib)
        module, took = _timed(lambda: importlib.import_module(name))
        assert getattr(module, "OK", False) and took < FEW_S, (module, took)

        again, took = _timed(lambda: colabkit.mount(force=True))
        assert again == m and took < FEW_S + 5, (again, took)
        assert os.getcwd() == str(project) and _mounts.health(vm.mountpoint).state == "live"
    assert holding(vm.sysroot, vm.mountpoint) == {}


# -- 5. nothing is written into an unmounted mountpoint ---------------------------------------------


def test_after_flush_nothing_is_written_under_the_mountpoint(opened, vm, tmp_path):
    _, project, _ = opened
    (vm.mydrive / "data").mkdir()
    (vm.mydrive / "data/a.txt").write_text("a")
    colabkit.flush()
    assert str(vm.mountpoint) not in mount_table() and not any(vm.mountpoint.iterdir())
    attempts = {
        "save": lambda: colabkit.save({"step": 1}, project / "checkpoints"),
        "stage from": lambda: colabkit.stage(vm.mountpoint / "MyDrive/data", tmp_path / "local"),
        "stage into": lambda: colabkit.stage(tmp_path / "lib", vm.mountpoint / "MyDrive/copy"),
        "project": lambda: colabkit.project(str(project), install=False),
        "run": lambda: colabkit.run(str(tmp_path / "train.py"), log_dir=str(project / "runs"), monitor=False),
        "run a script on Drive": lambda: colabkit.run(str(project / "projmod.py"), monitor=False),
    }
    (tmp_path / "train.py").write_text("print('never started')\n")
    for what, call in attempts.items():
        with pytest.raises(MountError) as info:
            call()
        err = info.value
        assert err.reason == "not_mounted" and err.mountpoint == str(vm.mountpoint), what
        assert f"Drive is not mounted at {vm.mountpoint} (colabkit.flush() unmounts it)" in err.message, what
        assert err.hint.startswith("Mount Drive again with colabkit.mount()"), what
        if what.startswith("run"):
            assert ("read the script" if "on Drive" in what else "create the run folder") in err.message, what
    assert not any(vm.mountpoint.iterdir())  # nothing landed under the bare mountpoint
    assert not (tmp_path / "local").exists()
    colabkit.mount()  # and nothing blocks the next mount
    assert (project / "projmod.py").exists()
    _drive.require_mounted(project / "runs")


def test_a_dead_or_hung_mount_refuses_writes_quickly(opened, vm):
    _, project, _ = opened
    with hung_fuse(vm.mountpoint):
        err, took = _timed(lambda: _checkpoint.save({"step": 1}, project / "checkpoints"))
        assert isinstance(err, MountError) and err.reason == "hung" and took < FEW_S, (err, took)
        assert "colabkit cannot save a checkpoint" in err.message
    kill_fuse(vm.mountpoint)
    err, took = _timed(lambda: _stage.stage(project, Path("/tmp") / f"never-{uuid.uuid4().hex}"))
    assert isinstance(err, MountError) and err.reason == "dead" and took < FEW_S, (err, took)


def test_off_colab_the_local_stand_in_is_no_mountpoint(tmp_path):
    m = colabkit.mount("local")
    _drive.require_mounted(m.root / "test/runs")
    _drive.require_mounted(tmp_path / "anywhere")


# -- 7. readonly=True, force=True never loops --------------------------------------------------------


def test_readonly_is_made_real_when_drivefs_mounts_read_write(vm, monkeypatch):
    monkeypatch.setenv("FAKE_DRIVEFS_READONLY", "ignore")  # DriveFS gets read_only_mode:true, mounts rw
    colabkit.mount()
    with pytest.raises(MountError, match="readonly=True asks for read-only") as info:
        colabkit.mount(readonly=True)
    assert "colabkit.mount('drive', readonly=True, force=True)" in info.value.hint
    m = colabkit.mount(readonly=True, force=True)
    assert m.readonly and _mounts.entry(vm.mountpoint).readonly
    with pytest.raises(OSError) as denied:
        (m.root / "x.txt").write_text("no")
    assert denied.value.errno == errno.EROFS
    assert colabkit.mount(readonly=True) == m  # what the hint said now holds: no circle


def test_readonly_that_cannot_be_made_says_how_to_go_on(vm, monkeypatch):
    monkeypatch.setenv("FAKE_DRIVEFS_READONLY", "ignore")
    monkeypatch.setattr(_mounts, "make_readonly", lambda point: False)
    with pytest.raises(MountError) as info:
        colabkit.mount(readonly=True)
    err = info.value
    assert err.reason == "readonly_unsupported"
    assert "read-write: DriveFS did not make it read-only, and colabkit could not either" in err.message
    assert "Use it as it is with colabkit.mount()" in err.hint and "force=True" not in err.hint
    m = colabkit.mount()  # the way the hint points works at once
    assert not m.readonly and mount_table()[str(vm.mountpoint)] == "fuse.drive"


# -- Drive dying under stage() ------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["packing", "extracting"])
def test_drive_dying_under_stage_gives_the_remount_fix_and_leaves_nothing_behind(opened, vm, tmp_path, monkeypatch, when):
    """The fault is real (DriveFS killed); only its moment is chosen: after the 40th file read for the archive,
    or once the archive is packed, as the extraction begins."""
    m, _, _ = opened
    ds = m.root / "ds"  # through the mount
    ds.mkdir()
    for i in range(120):
        (ds / f"f{i:03d}.bin").write_bytes(bytes([i]) * 20_000)
    dest = tmp_path / "local" / "ds"
    if when == "extracting":
        colabkit.stage(ds, tmp_path / "first", progress=False)  # the archive exists on Drive now
    real_read, real_extract, reads = _stage._read_small, _stage.extract_tar, []

    def read_then_die(path):
        reads.append(path)
        if len(reads) == 40:
            kill_fuse(vm.mountpoint)
        return real_read(path)

    def extract_on_a_dead_drive(*args, **kwargs):
        kill_fuse(vm.mountpoint)
        return real_extract(*args, **kwargs)

    if when == "packing":
        monkeypatch.setattr(_stage, "_read_small", read_then_die)
    else:
        monkeypatch.setattr(_stage, "extract_tar", extract_on_a_dead_drive)
    with pytest.raises(MountError) as info:
        colabkit.stage(ds, dest, progress=False)
    err = info.value
    assert err.reason == "dead" and "colabkit cannot stage from it" in err.message, err
    assert "colabkit.mount(force=True)" in err.hint
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOTCONN
    assert not dest.exists() and sorted(p.name for p in dest.parent.iterdir()) == []  # no partial copy
    monkeypatch.setattr(_stage, "_read_small", real_read)
    monkeypatch.setattr(_stage, "extract_tar", real_extract)
    colabkit.mount()  # heals the dead mount
    staged = colabkit.stage(ds, dest, progress=False)
    names = sorted(p.name for p in staged.iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in ds.iterdir()) and len(names) == 120
    assert [n for n in os.listdir(vm.mydrive) if ".tmp-" in n] == []  # the temp of the failed packing went too
