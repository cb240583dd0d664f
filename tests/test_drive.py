"""_drive.py on real FUSE mounts: the fake DriveFS serves a local folder through bindfs as fuse.drive."""

from __future__ import annotations

import errno
import os
import time

import pytest
from fakes.colabvm import forget_fake_colab, kill_fuse, mount_table, vm_processes

import colabkit
from colabkit import _drive, _mounts, cli
from colabkit.errors import MountError


def _mount_calls(vm):
    return [c for c in vm.calls() if c.startswith("drive.mount")]


# -- local ----------------------------------------------------------------------------------------


def test_local_is_the_default_off_colab(tmp_path):
    m = colabkit.mount()
    assert m == _mounts.Mount("local", tmp_path / "drive", tmp_path / "drive/MyDrive", False)
    assert m.root.is_dir()
    assert repr(m) == f"Mount(method='local', mountpoint='{tmp_path}/drive', root='{tmp_path}/drive/MyDrive')"
    assert "<code>" in m._repr_html_()
    assert _drive.find_mount() == m
    _drive.flush()  # os.sync: nothing to unmount
    assert m.root.is_dir()


def test_local_folder_is_read_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("COLABKIT_DRIVE", str(tmp_path / "other"))
    assert colabkit.mount("local").root == tmp_path / "other/MyDrive"
    assert colabkit.mount("local", tmp_path / "x").root == tmp_path / "x/MyDrive"


def test_find_mount_is_none_when_nothing_is_there():
    assert _drive.find_mount() is None


def test_unknown_method():
    with pytest.raises(MountError, match="unknown mount method 'gdrive'") as info:
        colabkit.mount("gdrive")
    assert "'ocamlfuse'" in info.value.hint and info.value.reason == "method"


def test_drive_off_colab_says_which_methods_work(tmp_path, monkeypatch):
    from fakes.colabvm import use_fake_colab

    use_fake_colab(monkeypatch)
    try:
        with pytest.raises(MountError) as info:
            colabkit.mount("drive", tmp_path / "d")
    finally:
        forget_fake_colab()
    assert info.value.reason == "not_colab" and "mount('local')" in info.value.hint
    assert "`colabkit mount --method local`" in info.value.hint


def test_mount_table_octal_escapes():
    assert _mounts._unescape(r"/tmp/My\040Drive\011x\134y") == "/tmp/My Drive\tx\\y"


def test_cli_mount_local(tmp_path, capsys):
    assert cli.main(["mount", "--method", "local"]) == 0
    assert (
        capsys.readouterr().out == f"mounted: local at {tmp_path}/drive, files in {tmp_path}/drive/MyDrive\n"
    )


# -- drive (fake google.colab + DriveFS over bindfs) -----------------------------------------------


@pytest.mark.fuse
def test_drive_mount_is_real_and_idempotent(vm, capsys):
    (vm.mydrive / "hello.txt").write_text("hi")
    m = colabkit.mount()
    assert m == _mounts.Mount("drive", vm.mountpoint, vm.mountpoint / "MyDrive", False)
    assert mount_table()[str(vm.mountpoint)] == "fuse.drive"
    assert (m.root / "hello.txt").read_text() == "hi"
    assert (vm.mountpoint / "My Drive" / "hello.txt").exists()
    (m.root / "new.txt").write_text("written through FUSE")
    assert (vm.mydrive / "new.txt").read_text() == "written through FUSE"
    assert "Mounted at" in capsys.readouterr().out
    calls = vm.calls()
    assert colabkit.mount() == m
    assert colabkit.mount("drive") == m
    assert vm.calls() == calls  # no second drive.mount, no second browser request
    _drive._active = None
    assert _drive.find_mount() == m  # seen in the mount table alone


@pytest.mark.fuse
def test_drive_readonly(vm):
    m = colabkit.mount(readonly=True)
    assert m.readonly
    with pytest.raises(OSError) as info:
        (m.root / "x.txt").write_text("no")
    assert info.value.errno == errno.EROFS


def test_the_default_plan_is_120_s_then_600_s_and_a_number_bounds_the_whole_call():
    from colabkit import _remount

    plan = _remount.Attempts(None)
    first = plan.first_share()
    assert (plan.drivefs_ms(first), plan.drivefs_ms(plan.total - first)) == (120_000, 600_000)
    assert plan.total == 730  # each try ends 5 s after DriveFS's own time-out, at the latest
    small = _remount.Attempts(6)
    assert small.first_share() == 3 and small.drivefs_ms(3) == 2250
    with pytest.raises(ValueError, match="positive number of seconds"):
        _remount.Attempts(0)


@pytest.mark.fuse
def test_timeout_is_retried_once_within_the_budget(vm, monkeypatch):
    # the first listing of the My Drive root takes 3 s: the first try (DriveFS told 2.25 s) times out, the
    # retry finds what it had listed in DriveFS's cache and mounts; all within timeout=6
    monkeypatch.setenv("FAKE_DRIVEFS_ROOT_READ_MS", "3000")
    started = time.monotonic()
    m = colabkit.mount(timeout=6)
    took = time.monotonic() - started
    assert m.method == "drive" and mount_table()[str(vm.mountpoint)] == "fuse.drive"
    calls = _mount_calls(vm)
    assert len(calls) == 2 and calls[0].endswith("timeout_ms=2250")
    assert 2.25 < took < 6, took


@pytest.mark.fuse
def test_timeout_twice_gives_advice(vm, monkeypatch):
    monkeypatch.setenv("FAKE_DRIVEFS_ROOT_READ_MS", "900000")
    started = time.monotonic()
    with pytest.raises(MountError, match=r"timed out twice \(2.25 s, then 2.\d+ s\) at .* while reading the My Drive root \(timeout=6 s in all\)") as info:
        colabkit.mount(timeout=6)
    assert time.monotonic() - started < 6
    assert info.value.reason == "timeout"
    assert "thousands of items" in info.value.hint and "faq.html#drive-timeout" in info.value.hint
    assert "colabkit.mount(timeout=900)" in info.value.hint
    assert "colabkit mount --timeout 900" in info.value.render("cli")
    assert len(_mount_calls(vm)) == 2
    assert str(vm.mountpoint) not in mount_table()


@pytest.mark.fuse
def test_timeout_bounds_the_whole_call_and_no_pexpect_text_reaches_the_user(vm, monkeypatch):
    # a DriveFS that never mounts nor exits: drive.py alone would wait timeout_ms/1000 + 30 s per try,
    # then raise pexpect's TIMEOUT, whose text is the spawn object's dump
    monkeypatch.setenv("FAKE_DRIVEFS", "stall")
    started = time.monotonic()
    with pytest.raises(MountError) as info:
        colabkit.mount(timeout=3)
    took = time.monotonic() - started
    err = info.value
    assert took < 5, took
    assert err.reason == "timeout" and err.method == "drive"
    assert err.message.startswith("Drive timed out twice (1.12 s, then ") and "before Drive was mounted" in err.message
    assert "(timeout=3 s in all)" in err.message
    for text in (str(err), err.render("cli")):
        assert "pexpect" not in text and "searcher" not in text
    assert "colabkit.mount(timeout=900)" in err.hint
    assert vm_processes(vm.sysroot) == {}  # the tries' shells, watcher loops and DriveFS are all gone
    assert str(vm.mountpoint) not in mount_table()


def test_pexpect_timeout_is_the_timeout_error_without_its_dump():
    from pexpect.exceptions import EOF, TIMEOUT

    from colabkit import _colab

    dump = "Timeout exceeded.\n<pexpect.popen_spawn.PopenSpawn object at 0x7f00>\nsearcher: searcher_re:\n"
    err = _colab._translate(TIMEOUT(dump), "drive.mount", "/content/drive")
    assert err.reason == "timeout" and "pexpect" not in str(err)
    assert err.message == (
        "Drive did not mount at /content/drive within the time drive.mount allows (its wait for DriveFS ran out)"
    )
    assert "colabkit.mount(timeout=900)" in err.hint
    eof = _colab._translate(EOF(dump), "drive.mount", "/content/drive")
    assert eof.reason == "failed" and "pexpect" not in str(eof)


@pytest.mark.fuse
def test_credential_refusal(vm, monkeypatch):
    monkeypatch.setenv("FAKE_COLAB_AUTH", "refuse")
    with pytest.raises(MountError) as info:
        colabkit.mount()
    assert info.value.reason == "credentials"
    assert "same Google account as the notebook" in info.value.hint and "allow the popup" in info.value.hint
    assert str(vm.mountpoint) not in mount_table()


@pytest.mark.fuse
def test_frontend_timeout_is_mount_failed(vm, monkeypatch):
    monkeypatch.setenv("FAKE_COLAB_AUTH", "timeout")
    with pytest.raises(MountError, match=r"\(mount failed\)") as info:
        colabkit.mount()
    assert info.value.reason == "failed"


@pytest.mark.fuse
def test_non_empty_mountpoint_is_named_and_kept(vm):
    vm.mountpoint.mkdir()
    names = ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt", "f.txt"]
    for name in names:
        (vm.mountpoint / name).write_text(name)
    with pytest.raises(MountError) as info:
        colabkit.mount()
    err = info.value
    assert err.reason == "not_empty" and err.mountpoint == str(vm.mountpoint)
    assert "'a.txt', 'b.txt', 'c.txt', 'd.txt', 'e.txt' and 1 more" in err.message
    assert "never deletes or moves" in err.hint
    assert sorted(p.name for p in vm.mountpoint.iterdir()) == names


@pytest.mark.fuse
def test_dead_mount_is_remounted(vm):
    m = colabkit.mount()
    kill_fuse(vm.mountpoint)
    with pytest.raises(OSError) as info:
        os.stat(vm.mountpoint)
    assert info.value.errno == errno.ENOTCONN
    assert _drive.find_mount() is None
    again = colabkit.mount()
    assert again == m
    assert (again.root).is_dir()
    assert "force_remount=True" in _mount_calls(vm)[-1]


@pytest.mark.fuse
def test_flush_unmounts_and_mount_works_again(vm):
    m = colabkit.mount()
    (m.root / "model.pt").write_bytes(b"weights")
    colabkit.flush()
    assert str(vm.mountpoint) not in mount_table()
    assert (vm.mydrive / "model.pt").read_bytes() == b"weights"
    assert any(c.startswith("drive.flush_and_unmount") for c in vm.calls())
    assert colabkit.mount() == m
    assert mount_table()[str(vm.mountpoint)] == "fuse.drive"


@pytest.mark.fuse
def test_flush_failure_keeps_the_mount(vm, monkeypatch):
    colabkit.mount()
    monkeypatch.setenv("FAKE_DRIVEFS_FLUSH", "fail")
    with pytest.raises(MountError) as info:
        colabkit.flush()
    assert info.value.reason == "flush" and "flush() again" in info.value.hint
    assert mount_table()[str(vm.mountpoint)] == "fuse.drive"


@pytest.mark.fuse
def test_force_remounts(vm):
    colabkit.mount()
    colabkit.mount(force=True)
    assert [c.split()[2] for c in _mount_calls(vm)] == ["force_remount=False", "force_remount=True"]
    assert mount_table()[str(vm.mountpoint)] == "fuse.drive"


def test_auto_on_colab_means_drive(vm, monkeypatch):
    monkeypatch.setenv("FAKE_DRIVEFS", "fail")
    with pytest.raises(MountError) as info:
        colabkit.mount()
    assert info.value.method == "drive"


@pytest.mark.fuse
@pytest.mark.parametrize("remembered", [True, False], ids=["this-process", "mount-table"])
def test_flush_of_a_dead_drive_says_so(vm, remembered):
    m = colabkit.mount()
    (m.root / "model.pt").write_bytes(b"weights")
    kill_fuse(vm.mountpoint)
    if not remembered:
        _drive._active = None  # another process mounted it: only the mount table knows
    with pytest.raises(MountError, match=r"Drive at .* is dead \(\[Errno 107\]") as info:
        colabkit.flush()
    err = info.value
    assert err.reason == "dead" and err.method == "drive" and err.mountpoint == str(vm.mountpoint)
    assert "Remount with colabkit.mount(force=True), then call colabkit.flush()" in err.hint
    assert "local cache" in err.hint
    assert not any(c.startswith("drive.flush_and_unmount") for c in vm.calls())
    assert str(vm.mountpoint) in mount_table()  # left for the remount the hint asks for
    assert colabkit.mount(force=True) == m
    colabkit.flush()
    assert str(vm.mountpoint) not in mount_table()


@pytest.mark.fuse
def test_leftover_my_drive_folder_is_not_a_mount(vm):
    (vm.mountpoint / "My Drive" / "old").mkdir(parents=True)
    for force in (False, True):
        with pytest.raises(
            MountError, match=r"it holds 'My Drive' \('My Drive' there is a plain folder"
        ) as info:
            colabkit.mount(force=force)
        err = info.value
        assert err.reason == "not_empty" and err.method == "drive"
        assert "never deletes or moves" in err.hint and "mountpoint=" in err.hint
    assert vm.calls() == []  # refused before asking the browser
    assert (vm.mountpoint / "My Drive" / "old").is_dir()
    assert str(vm.mountpoint) not in mount_table()


@pytest.mark.fuse
def test_readonly_must_match_the_live_mount(vm):
    colabkit.mount()
    with pytest.raises(
        MountError, match="already mounted read-write at .*readonly=True asks for read-only"
    ) as info:
        colabkit.mount(readonly=True)
    assert info.value.reason == "readonly"
    assert info.value.hint == (
        "Pass force=True to remount it read-only: colabkit.mount('drive', readonly=True, force=True)."
    )
    m = colabkit.mount(readonly=True, force=True)
    assert m.readonly and "ro" in _mounts.entry(vm.mountpoint).options
    with pytest.raises(MountError, match="already mounted read-only") as info:
        colabkit.mount()
    assert "readonly=False, force=True" in info.value.hint
    assert colabkit.mount(readonly=True) == m


@pytest.mark.fuse
def test_find_mount_on_colab_ignores_the_local_folder(vm, tmp_path):
    (tmp_path / "drive/MyDrive").mkdir(parents=True)  # $COLABKIT_DRIVE, the stand-in off Colab
    assert _drive.find_mount() is None
    m = colabkit.mount()
    colabkit.flush()
    assert _drive.find_mount() is None
    assert colabkit.mount() == m


def test_find_mount_off_colab_uses_the_local_folder(tmp_path):
    (tmp_path / "drive/MyDrive").mkdir(parents=True)
    assert _drive.find_mount() == _mounts.Mount("local", tmp_path / "drive", tmp_path / "drive/MyDrive")


def test_relative_local_folder_is_made_absolute_when_called(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLABKIT_DRIVE", "rel")
    m = colabkit.mount("local")
    assert m.mountpoint == tmp_path / "rel" and m.root.is_absolute()
