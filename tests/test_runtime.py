"""Runtime detection from the real signals of each environment (colab-facts.md §1)."""

from __future__ import annotations

import builtins
import sys

import pytest

from colabkit import _format, _runtime


@pytest.fixture
def vm(tmp_path, monkeypatch):
    """A fake machine root: files like /var/colab/hostname and /proc/uptime live under it."""
    root = tmp_path / "vm"
    (root / "proc").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "proc" / "uptime").write_text("3725.50 7000.00\n")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(root))
    return root


def _colab_vm(root):
    (root / "var" / "colab").mkdir(parents=True)
    (root / "var" / "colab" / "hostname").write_text("colab-vm\n")


class _Shell:
    pass


def _install_shell(monkeypatch, cls):
    monkeypatch.setattr(builtins, "get_ipython", lambda: cls(), raising=False)


def test_plain_terminal_is_terminal(vm):
    rt = _runtime.detect_runtime()
    assert rt.kind == "terminal"
    assert not rt.is_colab
    assert rt.shell is None
    assert rt.vm_limit_s is None and rt.time_left_s is None
    assert rt.uptime_s == pytest.approx(3725.5)


def test_colab_vm_file_means_colab(vm):
    _colab_vm(vm)
    rt = _runtime.detect_runtime()
    assert rt.kind == "colab"
    assert rt.time_left_s == pytest.approx(12 * 3600 - 3725.5)
    assert rt.describe() == "Colab, up 1h02m of ~12h00m"


def test_colab_release_tag_means_colab(vm, monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    rt = _runtime.detect_runtime()
    assert rt.kind == "colab"
    assert rt.colab_release == "release-colab_20250101-060000_RC00"
    assert "release-colab_20250101-060000_RC00" in rt.describe()


def test_colab_enterprise(vm, monkeypatch):
    monkeypatch.setenv("VERTEX_PRODUCT", "COLAB_ENTERPRISE")
    rt = _runtime.detect_runtime()
    assert rt.kind == "colab" and rt.colab_enterprise
    assert rt.describe().startswith("Colab Enterprise")


def test_colab_gpu_variable_alone_is_not_colab(vm, monkeypatch):
    monkeypatch.setenv("COLAB_GPU", "1")
    assert _runtime.detect_runtime().kind == "terminal"


def test_importable_google_colab_is_not_colab(vm, monkeypatch, tmp_path):
    pkg = tmp_path / "site" / "google" / "colab"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg.parent / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import importlib

    importlib.invalidate_caches()
    assert _runtime.detect_runtime().kind == "terminal"


def test_colab_shell_class_means_colab(vm, monkeypatch):
    cls = type("Shell", (), {"__module__": "google.colab._shell"})
    _install_shell(monkeypatch, cls)
    rt = _runtime.detect_runtime()
    assert rt.kind == "colab"
    assert rt.in_notebook


def test_kaggle(vm, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    rt = _runtime.detect_runtime()
    assert rt.kind == "kaggle" and rt.kaggle_run_type == "Interactive"
    assert rt.vm_limit_s == 12 * 3600  # the session limit drives budgets as the Colab VM's does
    assert rt.describe() == "Kaggle (Interactive), up 1h02m of ~12h00m"


def test_jupyter_kernel(vm, monkeypatch):
    _install_shell(monkeypatch, type("ZMQInteractiveShell", (), {}))
    rt = _runtime.detect_runtime()
    assert rt.kind == "jupyter" and rt.in_notebook


def test_ipython_in_a_terminal_is_terminal(vm, monkeypatch):
    _install_shell(monkeypatch, type("TerminalInteractiveShell", (), {}))
    rt = _runtime.detect_runtime()
    assert rt.kind == "terminal" and not rt.in_notebook


@pytest.mark.parametrize(
    ("env", "device"),
    [({"COLAB_TPU_1VM": "1"}, False), ({"TPU_ACCELERATOR_TYPE": "v5litepod-1"}, False), ({}, True)],
)
def test_tpu(vm, monkeypatch, env, device):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if device:
        (vm / "dev" / "accel0").write_text("")
    rt = _runtime.detect_runtime()
    assert rt.tpu
    assert "TPU runtime" in rt.describe()


def test_no_tpu(vm):
    assert not _runtime.detect_runtime().tpu


def test_unreadable_uptime_is_none(vm):
    (vm / "proc" / "uptime").unlink()
    _colab_vm(vm)
    rt = _runtime.detect_runtime()
    assert rt.uptime_s is None and rt.time_left_s is None
    assert rt.describe() == "Colab"


def test_detection_is_not_cached(vm, monkeypatch):
    assert _runtime.detect_runtime().kind == "terminal"
    _colab_vm(vm)
    assert _runtime.detect_runtime().kind == "colab"


@pytest.mark.parametrize("mode", ["notebook", "terminal", "plain"])
def test_display_mode_override(monkeypatch, mode):
    monkeypatch.setenv("COLABKIT_DISPLAY", mode)
    assert _runtime.display_mode() == mode


def test_display_mode_detects_notebook_and_pipe(monkeypatch):
    monkeypatch.delenv("COLABKIT_DISPLAY")
    monkeypatch.setattr(sys, "stdout", open("/dev/null", "w"))  # noqa: SIM115 - a non-tty stream
    try:
        assert _runtime.display_mode() == "plain"
        _install_shell(monkeypatch, type("ZMQInteractiveShell", (), {}))
        assert _runtime.display_mode() == "notebook"
    finally:
        sys.stdout.close()


@pytest.mark.parametrize(
    ("seconds", "text"), [(4.25, "4.2s"), (75, "1m15s"), (3725, "1h02m"), (12 * 3600, "12h00m")]
)
def test_format_duration(seconds, text):
    assert _format.format_duration(seconds) == text


def test_boot_id_reads_the_machine_root(vm):
    (vm / "proc" / "sys" / "kernel" / "random").mkdir(parents=True)
    (vm / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text("1a2b-3c\n")
    assert _runtime.boot_id() == "1a2b-3c"


def test_boot_id_unreadable_is_empty(vm):
    assert _runtime.boot_id() == ""


def test_repr_omits_defaults_and_html_is_escaped(vm, monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "<Batch>")
    rt = _runtime.detect_runtime()
    assert repr(rt) == "Runtime(kind='kaggle', kaggle_run_type='<Batch>', uptime_s=3725.5)"
    assert rt._repr_html_() == "<b>Runtime</b> Kaggle (&lt;Batch&gt;), up 1h02m of ~9h00m"
