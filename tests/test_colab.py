"""_colab.py: every known google.colab failure becomes a colabkit error with the fix; off Colab it says so."""

from __future__ import annotations

import pytest
from fakes.colabvm import (
    end_vm_processes,
    forget_fake_colab,
    make_vm,
    mount_table,
    unmount_under,
    use_fake_colab,
)

from colabkit import _colab
from colabkit.errors import MountError, ReleaseError


@pytest.fixture
def fake_colab(monkeypatch):
    use_fake_colab(monkeypatch)
    yield
    forget_fake_colab()


@pytest.fixture
def vm(tmp_path, monkeypatch):
    try:
        yield make_vm(tmp_path, monkeypatch)
    finally:
        end_vm_processes(tmp_path / "vm")
        unmount_under(tmp_path)
        forget_fake_colab()


def _known_failures():
    """Every google.colab failure listed in colab-facts.md §3-4: (name, exception, op)."""
    from google.colab._message import MessageError
    from google.colab.errors import RuntimeManagementError

    return [
        (
            "not on a Colab VM",
            NotImplementedError(
                "Mounting drive is unsupported in this environment. Use PyDrive2 instead. See examples at https://colab.research.google.com/notebooks/io.ipynb#scrollTo=7taylj9wpsA2."
            ),
            "drive.mount",
        ),
        ("space in mountpoint", ValueError("Mountpoint must not contain a space."), "drive.mount"),
        (
            "Colab Enterprise",
            NotImplementedError("google.colab.drive.mount is not supported in Colab Enterprise."),
            "drive.mount",
        ),
        ("credentials", MessageError("Error: credential propagation was unsuccessful"), "drive.mount"),
        ("symlink", ValueError("Mountpoint must not be a symlink"), "drive.mount"),
        ("not empty", ValueError("Mountpoint must not already contain files"), "drive.mount"),
        ("a file", ValueError("Mountpoint must either be a directory or not exist"), "drive.mount"),
        ("no parent", ValueError("Mountpoint must be in a directory that exists"), "drive.mount"),
        ("mount failed", ValueError("mount failed"), "drive.mount"),
        (
            "timeout",
            ValueError(
                "mount failed: timeout during initial read of root folder; for more info: https://research.google.com/colaboratory/faq.html#drive-timeout"
            ),
            "drive.mount",
        ),
        ("flush failed", ValueError("flush_and_unmount failed"), "drive.flush_and_unmount"),
        (
            "no runtime service",
            RuntimeManagementError("Unable to find the runtime management service."),
            "unassign",
        ),
        ("unassign refused", RuntimeManagementError("Unable to request VM unassignment."), "unassign"),
    ]


def test_every_known_colab_failure_is_mapped(fake_colab):
    unmapped = [
        name for name, exc, op in _known_failures() if _colab._translate(exc, op, "/content/drive") is None
    ]
    assert not unmapped, f"google.colab failures without a colabkit mapping: {unmapped}"


# name -> (error class, reason, words the message must hold, words the hint must hold)
_EXPECTED = {
    "not on a Colab VM": (MountError, "not_colab", "only on a Colab VM", "mount('local')"),
    "space in mountpoint": (MountError, "space", "contains a space", "without spaces"),
    "Colab Enterprise": (MountError, "enterprise", "Colab Enterprise", "ocamlfuse"),
    "credentials": (
        MountError,
        "credentials",
        "refused the credentials",
        "same Google account as the notebook",
    ),
    "symlink": (MountError, "symlink", "is a symlink", "Remove the link"),
    "not empty": (MountError, "not_empty", "is not empty", "never deletes or moves"),
    "a file": (MountError, "not_dir", "is a file", "must be a folder"),
    "no parent": (MountError, "no_parent", "does not exist", "os.makedirs"),
    "mount failed": (MountError, "failed", "mount failed", "Restart session"),
    "timeout": (MountError, "timeout", "did not answer in time", "thousands of items"),
    "flush failed": (MountError, "flush", "flush_and_unmount failed", "colabkit.flush() again"),
    "no runtime service": (ReleaseError, None, "runtime management service", "Disconnect and delete runtime"),
    "unassign refused": (
        ReleaseError,
        None,
        "Unable to request VM unassignment",
        "Disconnect and delete runtime",
    ),
}


def test_each_mapping_names_the_problem_and_the_fix(fake_colab):
    failures = _known_failures()
    assert {name for name, _, _ in failures} == set(_EXPECTED)
    for name, exc, op in failures:
        cls, reason, in_message, in_hint = _EXPECTED[name]
        err = _colab._translate(exc, op, "/content/drive")
        assert type(err) is cls, name
        assert in_message in err.message, name
        assert in_hint in err.hint, name
        if cls is MountError:
            assert err.reason == reason and err.method == "drive" and err.mountpoint == "/content/drive", name


def test_not_empty_names_five_entries_and_keeps_them(fake_colab, tmp_path):
    point = tmp_path / "mp"
    point.mkdir()
    for name in "abcdefg":
        (point / name).write_text(name)
    err = _colab._translate(ValueError("Mountpoint must not already contain files"), "drive.mount", str(point))
    assert "'a', 'b', 'c', 'd', 'e' and 2 more" in err.message
    assert sorted(p.name for p in point.iterdir()) == list("abcdefg")


def test_unknown_failure_becomes_generic_error_chained(fake_colab):
    with pytest.raises(MountError, match="google.colab drive.mount failed: KeyError") as info:
        with _colab._map_colab_errors("drive.mount", "/content/drive"):
            raise KeyError("surprise")
    assert isinstance(info.value.__cause__, KeyError)
    assert "Restart session" in info.value.hint


def test_off_colab_the_real_check_says_which_methods_work(fake_colab, tmp_path):
    # the fake google.colab is importable, but this is no Colab VM: drive.mount's first check refuses
    with pytest.raises(MountError) as info:
        _colab.drive_mount(tmp_path / "drive", force_remount=False, timeout_ms=1000, readonly=False)
    assert info.value.reason == "not_colab"
    assert "terminal" in info.value.message
    assert info.value.hint == (
        "Here use colabkit.mount('local') (`colabkit mount --method local` in a terminal; a local folder stands "
        "in for Drive), or for real Drive access colabkit.mount('ocamlfuse', service_account='key.json') "
        "(`colabkit mount --method ocamlfuse --service-account key.json`) with a service account key whose "
        "e-mail the Drive folders are shared with."
    )
    assert isinstance(info.value.__cause__, NotImplementedError)


def test_without_google_colab_installed():
    forget_fake_colab()
    with pytest.raises(MountError, match="google.colab is not importable") as info:
        _colab.drive_mount("/content/drive", force_remount=False, timeout_ms=1000, readonly=False)
    assert info.value.reason == "not_colab" and "ocamlfuse" in info.value.hint
    with pytest.raises(ReleaseError, match="no Colab runtime to give back"):
        _colab.runtime_unassign()


def test_fake_refuses_to_mount_without_timeout(vm):
    from google.colab import drive

    with pytest.raises(drive.RequestWouldHangIndefinitelyError):
        drive.mount(str(vm.mountpoint))


def test_unassign_errors_are_release_errors(vm, monkeypatch):
    monkeypatch.setenv("FAKE_COLAB_UNASSIGN", "refuse")
    with pytest.raises(ReleaseError, match="Unable to request VM unassignment"):
        _colab.runtime_unassign()
    monkeypatch.delenv("TBE_RUNTIME_ADDR")
    with pytest.raises(ReleaseError, match="runtime management service"):
        _colab.runtime_unassign()
    assert not vm.unassigned
    monkeypatch.setenv("TBE_RUNTIME_ADDR", "172.28.0.1:8011")
    monkeypatch.delenv("FAKE_COLAB_UNASSIGN")
    _colab.runtime_unassign()
    assert vm.unassigned


def test_credential_refusal_through_the_fake(vm, monkeypatch):
    monkeypatch.setenv("FAKE_COLAB_AUTH", "refuse")
    with pytest.raises(MountError) as info:
        _colab.drive_mount(vm.mountpoint, force_remount=False, timeout_ms=120000, readonly=False)
    assert info.value.reason == "credentials"
    assert "allow the popup" in info.value.hint


def test_enterprise_and_space_through_the_fake(vm, monkeypatch):
    with pytest.raises(MountError) as info:
        _colab.drive_mount(
            vm.sysroot / "content/my drive", force_remount=False, timeout_ms=1000, readonly=False
        )
    assert info.value.reason == "space"
    monkeypatch.setenv("VERTEX_PRODUCT", "COLAB_ENTERPRISE")
    with pytest.raises(MountError) as info:
        _colab.drive_mount(vm.mountpoint, force_remount=False, timeout_ms=1000, readonly=False)
    assert info.value.reason == "enterprise"
    assert vm.calls() == []  # refused before asking the browser


@pytest.mark.fuse
def test_fake_says_already_mounted_without_force(vm, tmp_path, capsys):
    mp = str(vm.mountpoint)
    try:
        _colab.drive_mount(vm.mountpoint, force_remount=False, timeout_ms=120000, readonly=False)
        assert capsys.readouterr().out == f"Mounted at {mp}\n"
        _colab.drive_mount(vm.mountpoint, force_remount=False, timeout_ms=120000, readonly=False)
        assert capsys.readouterr().out == (
            f"Drive already mounted at {mp}; to attempt to forcibly remount, call "
            f'drive.mount("{mp}", force_remount=True).\n'
        )
        assert mount_table()[mp] == "fuse.drive"
        assert [c.split()[0] for c in vm.calls()].count("blocking_request") == 2  # it asks before it looks
        _colab.drive_flush_and_unmount()
        assert mp not in mount_table()
    finally:
        unmount_under(tmp_path)


def test_fake_flush_with_nothing_mounted(vm, capsys):
    _colab.drive_flush_and_unmount()
    assert capsys.readouterr().out == "Drive not mounted, so nothing to flush and unmount.\n"
    assert vm.calls() == ["drive.flush_and_unmount timeout_ms=86400000"]
