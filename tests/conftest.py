"""Shared fixtures: a clean private environment for every test, and guards against leaks."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.colabvm import FakeVM, end_vm_processes, forget_fake_colab, make_vm, mounts_under, unmount_under
from fakes.kagglevm import FakeKaggle, make_kaggle

ROOT = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"

_DROP_PREFIXES = ("COLABKIT_", "COLAB_", "KAGGLE_", "TPU_", "TBE_")
_DROP = {"CUDA_VISIBLE_DEVICES", "NO_COLOR", "VERTEX_PRODUCT", "PYTHONSTARTUP", "MPLBACKEND"}
# secrets colabkit.doctor() looks for by name (_secrets.KNOWN_NAMES): one set on the host must not show in a test
_DROP |= {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GITHUB_TOKEN",
          "COMET_API_KEY", "NEPTUNE_API_TOKEN"}  # fmt: skip


@pytest.fixture(autouse=True)
def clean_environ(tmp_path, monkeypatch):
    """Each test starts with no colabkit/Colab/Kaggle variables, a private HOME and a private Drive stand-in,
    and a machine root of its own: this host's ``/proc`` (uptime, boot id) but none of its ``/var/colab``,
    ``/content``, ``/dev`` or ``/etc``, so a real Colab VM (or a machine that has ``/var/colab/hostname``)
    neither flips a test's verdict nor gets written to by the fake ``google.colab``."""
    for key in list(os.environ):
        if key.startswith(_DROP_PREFIXES) or key in _DROP:
            monkeypatch.delenv(key, raising=False)
    host = tmp_path / "host"
    host.mkdir()
    (host / "proc").symlink_to("/proc")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(host))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COLABKIT_DRIVE", str(tmp_path / "drive"))
    monkeypatch.setenv("COLABKIT_DISPLAY", "plain")
    cwd = os.getcwd()
    path = list(sys.path)
    yield
    os.chdir(cwd)
    sys.path[:] = path


# Tests in these modules describe a machine without PyTorch ("torch  not installed"); CI installs torch's
# CPU build for the tests that use it, so there it is hidden from them and from the processes they start.
NO_TORCH_MODULES = {"test_report", "test_cli", "test_import"}
_TORCH_SPEC = importlib.util.find_spec("torch")  # where torch is installed (not imported)
TORCH_SITE = (
    str(Path(_TORCH_SPEC.submodule_search_locations[0]).parent)
    if _TORCH_SPEC is not None and _TORCH_SPEC.submodule_search_locations
    else None
)


@pytest.fixture(autouse=True)
def _hide_torch_where_absent(request, monkeypatch, clean_environ):
    """torch invisible (as not installed) to the tests of ``NO_TORCH_MODULES`` and their child processes."""
    if TORCH_SITE is None or request.node.module.__name__.rpartition(".")[2] not in NO_TORCH_MODULES:
        yield
        return
    from fakes.notorch import sitecustomize

    site, before = sitecustomize.hide(TORCH_SITE)
    monkeypatch.setenv(sitecustomize.ENV, site)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(FAKES / "notorch"), os.environ.get("PYTHONPATH")) if p))
    try:
        yield
    finally:
        if before is None:
            sys.path_importer_cache.pop(site, None)
        else:
            sys.path_importer_cache[site] = before


@pytest.fixture(autouse=True)
def _forget_mount_and_project(monkeypatch):
    """No Drive mount or open project remembered by an earlier test (only for modules already imported)."""
    for module, name in (
        ("colabkit._drive", "_active"),
        ("colabkit._project", "_current"),
        ("colabkit._pathguard", "_project_entry"),
        ("colabkit._notebook", "_failed_setup"),  # a setup() that failed in an earlier test
    ):
        if module in sys.modules:
            monkeypatch.setattr(sys.modules[module], name, None)
    if "colabkit._display" in sys.modules:
        monkeypatch.setattr(sys.modules["colabkit._display"], "_said", set())  # "no GPU" said by an earlier test
    if "colabkit._drive" in sys.modules:
        monkeypatch.setattr(sys.modules["colabkit._drive"], "_known", {})  # mountpoints an earlier test mounted
    if "colabkit._mounts" in sys.modules:
        sys.modules["colabkit._mounts"].forget()  # no verdict of an earlier test's mount


@pytest.fixture(autouse=True)
def _forget_secrets_and_front_end():
    """No secret found and no front end established by an earlier test (only for modules already imported)."""

    def forget() -> None:
        for module, call in (("colabkit._secrets", "forget"), ("colabkit._runtime", "forget_front_end")):
            if module in sys.modules:
                getattr(sys.modules[module], call)()

    forget()
    yield
    forget()


@pytest.fixture
def proj(tmp_path, monkeypatch) -> Path:
    """An empty folder as the working directory, with no project open: run() puts its runs under it."""
    from colabkit import _run

    folder = tmp_path / "proj"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setattr(_run, "_project_dir", lambda: None)
    return folder


def script(folder: Path, name: str, body: str) -> Path:
    """Write a training script (``body`` dedented) into ``folder``."""
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def vm(tmp_path, monkeypatch) -> Iterator[FakeVM]:
    """A fake Colab VM (fakes/colabvm.py); what its fake google.colab left running is ended and whatever the
    test mounted under tmp_path is unmounted after."""
    try:
        yield make_vm(tmp_path, monkeypatch)
    finally:
        end_vm_processes(tmp_path / "vm")
        unmount_under(tmp_path)
        forget_fake_colab()


@pytest.fixture
def kaggle(tmp_path, monkeypatch) -> Iterator[FakeKaggle]:
    """A fake Kaggle machine (fakes/kagglevm.py): /kaggle/input, /kaggle/working, its variables, its secrets."""
    try:
        yield make_kaggle(tmp_path, monkeypatch)
    finally:
        forget_fake_colab()
        sys.modules.pop("kaggle_secrets", None)


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, for a child that imports colabkit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


@contextlib.contextmanager
def child_process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """A child with text pipes to its stdin and stdout; killed, reaped and its pipes closed on the way out."""
    child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        yield child
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()


@pytest.fixture(autouse=True)
def no_leaks(tmp_path):
    """Fail a test that leaves a colabkit thread, a child process or a mount behind (and clean them up)."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leaked_mounts = mounts_under(tmp_path)
    unmount_under(tmp_path)
    # the import guard's lookup thread serves every later import through a Drive folder: it lives with the process
    threads = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("colabkit") and t.name != "colabkit-import-lookup" and t.is_alive()
    ]
    children = []
    for child in me.children(recursive=True):
        if child.pid in before:
            continue
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            children.append(f"{child.pid} {' '.join(child.cmdline())[:120]}")
            child.kill()
        except psutil.Error:
            continue
    problems = []
    if leaked_mounts:
        problems.append(f"mounts left behind: {leaked_mounts}")
    if threads:
        problems.append(f"threads left running: {threads}")
    if children:
        problems.append(f"child processes left running: {children}")
    if problems:
        pytest.fail("; ".join(problems))


def _have_gpu() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def nvml_loads() -> bool:
    """Whether NVML initialises here: an NVIDIA driver is installed, with or without a GPU."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


NO_DRIVER = pytest.mark.skipif(nvml_loads(), reason="this machine has an NVIDIA driver")


_GPU = None


@pytest.fixture(autouse=True)
def _skip_gpu_tests(request):
    global _GPU
    if request.node.get_closest_marker("gpu") is not None:
        if _GPU is None:
            _GPU = _have_gpu()
        if not _GPU:
            pytest.skip("needs a real NVIDIA GPU (NVML found none)")


def fuse_missing_reason() -> str | None:
    """Why FUSE tests cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("bindfs") is None:
        return "bindfs is not installed (apt-get install bindfs fuse3)"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    return None


@pytest.fixture(autouse=True)
def _skip_fuse_tests(request):
    if request.node.get_closest_marker("fuse") is not None:
        reason = fuse_missing_reason()
        if reason:
            pytest.skip(f"needs FUSE: {reason}")
