"""setup(): runtime → GPU → mount → project, one short summary, idempotent; release() flushes first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import child_env
from fakes.colabvm import kill_fuse, mount_table

import colabkit
from colabkit import _gpu, _project
from colabkit.errors import ColabkitWarning, MountError, NoGpuError, ProjectNotFound, ReleaseError

T4 = _gpu.GpuInfo(
    index=0,
    name="Tesla T4",
    uuid="GPU-1",
    memory_total=15 * 1024**3,
    memory_used=0,
    memory_free=15 * 1024**3,
    driver_version="550.54.15",
    cuda_driver_version="12.4",
    compute_capability=(7, 5),
    temperature_c=40,
    power_w=9.0,
    utilization_pct=0,
)


@pytest.fixture
def t4(monkeypatch):
    monkeypatch.setattr(_gpu, "require_gpu", lambda *a, **k: T4)
    monkeypatch.setattr(_gpu, "gpus", lambda: [T4])


def test_setup_local_prints_a_short_summary(tmp_path, t4, capsys):
    (tmp_path / "drive/MyDrive/test").mkdir(parents=True)
    s = colabkit.setup("test")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert 1 < len(lines) <= 8
    assert lines[0].startswith("colabkit ") and lines[0].endswith(" ready")
    assert lines[1].startswith("Runtime  terminal")
    assert lines[2] == "GPU      Tesla T4, 15.0 GiB (15.0 GiB free, driver 550.54.15, CUDA 12.4)"
    assert lines[3] == f"Drive    local at {tmp_path}/drive, files in {tmp_path}/drive/MyDrive"
    assert lines[4] == f"Project  test at {tmp_path}/drive/MyDrive/test (cwd), requirements none"
    assert s.gpu == T4 and s.mount.method == "local" and s.project.path == tmp_path / "drive/MyDrive/test"
    assert os.getcwd() == str(tmp_path / "drive/MyDrive/test")
    assert (
        repr(s) == f"<Session terminal gpu='Tesla T4' mount=local:{tmp_path}/drive project={s.project.path}>"
    )
    assert _project.current_project() == s.project


def test_setup_twice_changes_nothing(tmp_path, t4, capsys):
    (tmp_path / "drive/MyDrive/test").mkdir(parents=True)
    first = colabkit.setup("test")
    state = (os.getcwd(), list(sys.path), sorted(os.listdir(tmp_path / "drive")))
    second = colabkit.setup("test")
    assert (os.getcwd(), list(sys.path), sorted(os.listdir(tmp_path / "drive"))) == state
    assert (second.mount, second.project, second.gpu) == (first.mount, first.project, first.gpu)
    out = capsys.readouterr().out
    assert out[: len(out) // 2] == out[len(out) // 2 :]


def test_no_gpu_stops_before_mounting(tmp_path):
    # the real path: no NVIDIA driver here, so require_gpu raises
    if _gpu.gpus():
        pytest.skip("this machine has a GPU")
    with pytest.raises(NoGpuError) as info:
        colabkit.setup("test")
    assert info.value.hint
    assert not (tmp_path / "drive").exists()  # nothing mounted or created on a CPU runtime
    assert _project.current_project() is None


def test_prefer_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_gpu, "gpus", lambda: [])
    with pytest.warns(ColabkitWarning, match="^no GPU: running on the CPU, much slower. Install the NVIDIA driver"):
        s = colabkit.setup(gpu="prefer")
    assert s.gpu is None and s.mount.method == "local"
    assert "GPU      none: running on the CPU, much slower" in capsys.readouterr().out


def test_stops_at_the_first_failure(tmp_path, capsys):
    with pytest.raises(ProjectNotFound):
        colabkit.setup("missing", gpu=False)
    assert (tmp_path / "drive/MyDrive").is_dir()  # mount ran, then the project failed
    assert capsys.readouterr().out == ""  # no summary for a setup that failed


def test_no_mount_needs_an_absolute_project(tmp_path, capsys):
    with pytest.raises(ValueError, match="relative to Drive, but mount=False"):
        colabkit.setup("test", gpu=False, mount=False)
    s = colabkit.setup(str(tmp_path), gpu=False, mount=False)
    assert s.mount is None and s.project.path == tmp_path
    out = capsys.readouterr().out
    assert "GPU      not checked (gpu=False)" in out and "Drive    not mounted (mount=False)" in out


def test_bad_arguments():
    with pytest.raises(ValueError, match="gpu='yes'"):
        colabkit.setup(gpu="yes")
    with pytest.raises(ValueError, match="mount='gdrive'"):
        colabkit.setup(gpu=False, mount="gdrive")


def test_html_is_escaped(tmp_path, monkeypatch):
    folder = tmp_path / "<b>x&y"
    folder.mkdir()
    s = colabkit.setup(str(folder), gpu=False, mount=False)
    page = s._repr_html_()
    assert "&lt;b&gt;x&amp;y" in page and "<b>x" not in page


def test_notebook_display_goes_through_ipython(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setenv("COLABKIT_DISPLAY", "notebook")
    import IPython.display

    monkeypatch.setattr(IPython.display, "display", lambda *args, **kwargs: shown.append((args, kwargs)))
    s = colabkit.setup(gpu=False, mount="local")
    assert shown == [(({"text/plain": s.summary(), "text/html": s._repr_html_()},), {"raw": True})]


def test_release_off_colab_keeps_everything(tmp_path, capsys):
    colabkit.release()
    out = capsys.readouterr().out
    assert out.startswith("colabkit: this is terminal") and out.endswith(
        ", not Colab: there is no runtime to release.\n"
    )


@pytest.mark.fuse
def test_setup_on_colab_then_release(vm, t4, capsys):
    (vm.mydrive / "test").mkdir()
    s = colabkit.setup("test")
    assert s.runtime.is_colab and s.mount.method == "drive"
    assert s.project.path == vm.mountpoint / "MyDrive/test"
    asks = [c for c in vm.calls() if c.startswith("blocking_request")]
    colabkit.setup("test")
    assert [c for c in vm.calls() if c.startswith("blocking_request")] == asks  # no second popup
    (s.project.path / "ckpt.pt").write_bytes(b"w")
    assert os.getcwd() == str(s.project.path)
    colabkit.release()
    assert os.getcwd() == str(vm.sysroot / "content")  # stepped out so the mount could go
    assert str(vm.mountpoint) not in mount_table()
    assert (vm.mydrive / "test/ckpt.pt").read_bytes() == b"w"
    assert vm.unassigned
    assert vm.calls()[-2:][0].startswith("drive.flush_and_unmount") and vm.calls()[-1] == "runtime.unassign"


@pytest.mark.fuse
def test_release_keeps_the_vm_when_the_flush_fails(vm, monkeypatch):
    colabkit.mount()
    monkeypatch.setenv("FAKE_DRIVEFS_FLUSH", "fail")
    with pytest.raises(ReleaseError, match="the runtime was kept") as info:
        colabkit.release()
    assert isinstance(info.value.__cause__, MountError)
    assert "release() again" in info.value.hint
    assert not vm.unassigned
    assert mount_table()[str(vm.mountpoint)] == "fuse.drive"


def test_release_unassign_refused(vm, monkeypatch):
    monkeypatch.setenv("FAKE_COLAB_UNASSIGN", "refuse")
    with pytest.raises(ReleaseError, match="could not give the runtime back") as info:
        colabkit.release()
    assert "Disconnect and delete runtime" in info.value.hint


@pytest.mark.fuse
def test_release_keeps_the_vm_when_drive_died(vm):
    m = colabkit.mount()
    (m.root / "ckpt.pt").write_bytes(b"w")
    kill_fuse(vm.mountpoint)
    with pytest.raises(ReleaseError, match="the runtime was kept: Drive at .* is dead") as info:
        colabkit.release()
    assert info.value.__cause__.reason == "dead"
    assert "colabkit.mount(force=True), then call colabkit.flush()" in info.value.hint
    assert info.value.hint.endswith("Then call colabkit.release() again.")
    assert not vm.unassigned
    assert "runtime.unassign" not in vm.calls()


def test_prefer_goes_on_when_nvml_is_broken(tmp_path):
    # an old pynvml 11.x folder shadowing nvidia-ml-py: gpus() raises GpuError, gpu="prefer" must go on
    shadow = tmp_path / "shadow/pynvml"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("def nvmlInit():\n    pass\n")
    script = (
        "import warnings, colabkit\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    s = colabkit.setup(gpu='prefer', mount=False)\n"
        "print('GPU:', s.gpu)\n"
        "for w in caught: print('WARNING:', w.category.__name__, w.message)\n"
    )
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), env["PYTHONPATH"]])
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "GPU      none: running on the CPU, much slower" in proc.stdout and "GPU: None" in proc.stdout
    warning = [line for line in proc.stdout.splitlines() if line.startswith("WARNING:")]
    assert len(warning) == 1 and warning[0].startswith(
        "WARNING: ColabkitWarning the GPU could not be checked: "
    )
    assert (
        "is the old pynvml 11.x package" in warning[0] and "; running on the CPU, much slower. " in warning[0]
    )
    assert "nvidia-ml-py" in warning[0].split("To use the GPU: ", 1)[1]


# -- the steps that need a person come before the slow ones --------------------------------------------------


def test_secrets_are_found_before_the_requirements_install(tmp_path, t4, monkeypatch, capsys):
    from colabkit.errors import SecretNotFound

    project = tmp_path / "drive/MyDrive/test"
    project.mkdir(parents=True)
    (project / "requirements.txt").write_text("this-package-does-not-exist-colabkit==0.0.0\n")
    with pytest.raises(SecretNotFound) as err:
        colabkit.setup("test", mount="local", secrets=["COLABKIT_TEST_TOKEN_ABSENT"])
    assert err.value.name == "COLABKIT_TEST_TOKEN_ABSENT"
    assert "installing requirements.txt" not in capsys.readouterr().out  # pip never started


def test_secrets_found_by_setup_are_in_the_summary_never_their_value(tmp_path, t4, monkeypatch, capsys):
    from colabkit import _secrets

    _secrets.forget()
    (tmp_path / "drive/MyDrive/test").mkdir(parents=True)
    monkeypatch.setenv("HF_TOKEN", "hf_setupSecretValue123")
    session = colabkit.setup("test", mount="local", secrets=["HF_TOKEN"])
    assert session.secrets.sources() == {"HF_TOKEN": "env"}
    out = capsys.readouterr().out
    assert "Secrets  HF_TOKEN (the environment)" in out
    assert "hf_setupSecretValue123" not in out and "hf_setupSecretValue123" not in repr(session)


def test_setup_reads_the_secrets_in_the_projects_own_dotenv(tmp_path, t4, capsys):
    from colabkit import _secrets

    _secrets.forget()
    project = tmp_path / "drive/MyDrive/test"
    project.mkdir(parents=True)
    (project / ".env").write_text("WANDB_API_KEY=wandb-fromTheProjectsDotenv\n")
    os.chmod(project / ".env", 0o600)
    (project / "requirements.txt").write_text("this-package-does-not-exist-colabkit==0.0.0\n")
    session = colabkit.setup("test", mount="local", secrets=["WANDB_API_KEY"], install=False)
    assert session.secrets.sources() == {"WANDB_API_KEY": "dotenv"}
    assert session.project.path == project  # the .env of the project being opened, not of an earlier one
    out = capsys.readouterr().out
    assert f"Secrets  WANDB_API_KEY ({project / '.env'})" in out
    assert "wandb-fromTheProjectsDotenv" not in out
    _secrets.forget()


def test_torch_is_checked_after_the_mount(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(_gpu, "require_gpu", lambda *a, check_torch=False, **k: calls.append(("gpu", check_torch)) or T4)
    from colabkit import _drive

    real_mount = _drive.mount
    monkeypatch.setattr(_drive, "mount", lambda *a, **k: calls.append(("mount",)) or real_mount(*a, **k))
    colabkit.setup(mount="local")
    assert calls == [("gpu", False), ("mount",), ("gpu", True)]


# -- the GPU check's note on precision -----------------------------------------------------------------------


def test_a_t4_is_told_to_train_in_float16_not_bfloat16(tmp_path, t4, capsys):
    colabkit.setup(mount="local")
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "Note     the Tesla T4 has no native bfloat16: train with float16 autocast"


def test_an_ampere_gpu_gets_no_precision_note(tmp_path, monkeypatch, capsys):
    import dataclasses

    a100 = dataclasses.replace(T4, name="NVIDIA A100-SXM4-40GB", compute_capability=(8, 0))
    monkeypatch.setattr(_gpu, "require_gpu", lambda *a, **k: a100)
    colabkit.setup(mount="local")
    assert "Note" not in capsys.readouterr().out
