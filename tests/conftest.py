"""Shared fixtures: a clean private environment for every test, and guards against leaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"

_DROP_PREFIXES = ("COLABKIT_", "COLAB_", "KAGGLE_", "TPU_", "TBE_")
_DROP = {"CUDA_VISIBLE_DEVICES", "NO_COLOR", "VERTEX_PRODUCT", "PYTHONSTARTUP", "MPLBACKEND"}


@pytest.fixture(autouse=True)
def clean_environ(tmp_path, monkeypatch):
    """Each test starts with no colabkit/Colab/Kaggle variables, a private HOME and a private Drive stand-in."""
    for key in list(os.environ):
        if key.startswith(_DROP_PREFIXES) or key in _DROP:
            monkeypatch.delenv(key, raising=False)
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


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder) + "/"
    out = []
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        if len(fields) > 1:
            point = fields[1].replace("\\040", " ")
            if point.startswith(prefix):
                out.append(point)
    return out


def unmount_all_under(folder: Path) -> None:
    """Unmount every mount below ``folder``, deepest first: ``fusermount3 -u``, else ``umount -l``."""
    for point in sorted(_mounts_under(folder), key=len, reverse=True):
        for cmd in (["fusermount3", "-u", point], ["fusermount", "-u", point], ["umount", "-l", point]):
            if shutil.which(cmd[0]) is None:
                continue
            if subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
                break


@pytest.fixture(autouse=True)
def no_leaks(tmp_path):
    """Fail a test that leaves a colabkit thread, a child process or a mount behind (and clean them up)."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leaked_mounts = _mounts_under(tmp_path)
    unmount_all_under(tmp_path)
    threads = [t.name for t in threading.enumerate() if t.name.startswith("colabkit") and t.is_alive()]
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
