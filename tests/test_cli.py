"""The ``colabkit`` command run as a real child process: exit codes and exact lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NO_DRIVER

import colabkit

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def machine(tmp_path):
    """Environment for the child: a fake machine root whose /proc/uptime says 1h02m05s."""
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "uptime").write_text("3725.5 7000.0\n")
    return {**os.environ, "COLABKIT_SYSROOT": str(root)}


def colabkit_cmd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "colabkit", *args], capture_output=True, text=True, env=env, timeout=90
    )


def test_version():
    out = colabkit_cmd("--version")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"colabkit {colabkit.__version__}\n", "")


def test_help_lists_info_and_doctor():
    out = colabkit_cmd("--help")
    assert out.returncode == 0
    assert "show the runtime, GPUs, memory, disk and Drive in one report" in out.stdout
    assert "check the setup; exit status 1 when a check fails" in out.stdout


@NO_DRIVER
def test_info_without_gpu(machine):
    out = colabkit_cmd("info", env=machine)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"colabkit {colabkit.__version__} info"
    assert lines[1] == "  runtime  terminal"
    assert lines[2].startswith(f"  python   {sys.version_info.major}.{sys.version_info.minor}.")
    assert lines[3] == "  gpu      none: No NVIDIA GPU found (NVML library libnvidia-ml.so.1 not found)."
    assert lines[4].startswith("  ram      ") and " available of " in lines[4]
    assert lines[5].startswith("  disk     ") and lines[5].endswith(f" at {Path.home()}")
    assert lines[6:] == [
        "  drive    not mounted",
        "  torch    not installed",
        "  cuda     n/a",
        "  uptime   1h02m",
    ]


@NO_DRIVER
def test_doctor_fails_without_gpu(machine):
    out = colabkit_cmd("doctor", env=machine)
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "colabkit doctor: 5 ok, 1 warn, 1 fail"
    assert lines[1:5] == [
        "  FAIL  gpu                No NVIDIA GPU found (NVML library libnvidia-ml.so.1 not found).",
        "        fix: Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it; "
        "in a container, start it with GPU access (docker run --gpus all ...).",
        "  ok    torch              not installed (nothing to check)",
        "  WARN  drive              Drive is not mounted",
    ]
    assert "  ok    vm time            up 1h02m" in lines


def _fake_pynvml(folder: Path) -> Path:
    """A ``pynvml`` module backed by the scripted fake, for a child process."""
    folder.mkdir()
    (folder / "pynvml.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from fakes.nvml import FakeDevice, FakeNvml\n"
        "_lib = FakeNvml([FakeDevice(used=512 * 1024**2)])\n"
        "def __getattr__(name):\n    return getattr(_lib, name)\n"
    )
    return folder


def test_doctor_passes_with_a_gpu(machine, tmp_path):
    env = {**machine, "PYTHONPATH": str(_fake_pynvml(tmp_path / "nvml"))}
    out = colabkit_cmd("doctor", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "colabkit doctor: 6 ok, 1 warn, 0 fail"
    assert (
        lines[1]
        == "  ok    gpu                Tesla T4, 15.0 GiB (0.5 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5"
    )
    info = colabkit_cmd("info", env=env)
    assert info.returncode == 0
    assert (
        "  gpu 0    Tesla T4, 15.0 GiB (0.5 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5"
        in info.stdout.splitlines()
    )
    assert "  cuda     driver supports CUDA 12.4" in info.stdout.splitlines()


@NO_DRIVER
def test_demo_without_gpu_warns_in_one_line_and_says_the_duration_once(machine):
    out = colabkit_cmd("demo", "--epochs", "1", "--steps", "5", env=machine)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "colabkit: no NVIDIA GPU found: going on on the CPU (gpu='prefer'). "
        "Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it; "
        "in a container, start it with GPU access (docker run --gpus all ...)."
    ]  # the fix for this runtime (a terminal), the same words as NoGpuError's
    lines = out.stdout.splitlines()
    assert not [line for line in lines if line.startswith("[colabkit] ")]  # no final status line on a pipe
    (first,) = [i for i, line in enumerate(lines) if line.startswith("train.py finished (exit status 0) in ")]
    # no GPU here: the stats line says so first, then the training child's RAM peak (the sampler watched it)
    assert lines[first + 1].startswith("no GPU, RAM peak ")
    assert "duration=" not in out.stdout
    project = Path(os.environ["COLABKIT_DRIVE"]) / "MyDrive" / "colabkit-demo"
    (run_dir,) = (project / "runs").iterdir()
    assert lines[-4:] == [
        "Next steps:",
        f"  this run's log, metrics.csv and summary.json are in {run_dir}",
        f"  list the project's runs: colabkit runs {project}",
        f"  train your own model: edit {project / 'train.py'} (your edits are kept when you run colabkit demo "
        f"again), then colabkit run {project / 'train.py'}",
    ]  # the command line's spelling: no colabkit.runs(...) in a terminal
