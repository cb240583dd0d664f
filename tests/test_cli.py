"""The ``colabkit`` command run as a real child process: exit codes and exact lines."""

from __future__ import annotations

import os
import shlex
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
    assert lines[0] == "colabkit doctor: 6 ok, 1 warn, 1 fail"
    assert lines[1:5] == [
        "  FAIL  gpu                No NVIDIA GPU found (NVML library libnvidia-ml.so.1 not found).",
        "        HINT: Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it; "
        "in a container, start it with GPU access (docker run --gpus all ...).",
        "  ok    torch              not installed (nothing to check)",
        "  WARN  drive              Drive is not mounted",
    ]
    assert "  ok    vm time            up 1h02m" in lines
    assert lines[-1] == (
        "  ok    secrets            none found yet (Colab's and Kaggle's secrets are read by name: "
        "setup(secrets=[...]) or run(secrets=[...]) in a notebook, colabkit run --secret NAME in a terminal)"
    )


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
    paths = [str(_fake_pynvml(tmp_path / "nvml")), machine.get("PYTHONPATH", "")]  # keep what conftest put there
    env = {**machine, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    out = colabkit_cmd("doctor", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "colabkit doctor: 7 ok, 1 warn, 0 fail"
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
        "colabkit: no GPU: running on the CPU, much slower. "
        "Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it; "
        "in a container, start it with GPU access (docker run --gpus all ...)."
    ]  # the fix for this runtime (a terminal), the same words as NoGpuError's
    lines = out.stdout.splitlines()
    assert not [line for line in lines if line.startswith("[colabkit] ")]  # no final status line on a pipe
    (first,) = [i for i, line in enumerate(lines) if line.startswith("train.py finished (exit status 0) in ")]
    # no GPU here, said once above: the stats line has the training child's RAM peak (the sampler watched it)
    assert lines[first + 1].startswith("RAM peak ")
    assert "gpu='prefer'" not in out.stdout + out.stderr and "NVML" not in out.stdout + out.stderr
    assert "duration=" not in out.stdout
    project = Path(os.environ["COLABKIT_DRIVE"]) / "MyDrive" / "colabkit-demo"
    (run_dir,) = (project / "runs").iterdir()
    assert lines[-4:] == [
        "Next steps:",
        f"  this run's log, metrics.csv and summary.json are in {run_dir}",
        f"  list the project's runs: colabkit runs {project}",
        f"  train your own model: edit {project / 'train.py'} (your edits are kept when you run colabkit demo "
        f"again), then cd {project} && colabkit run train.py",
    ]  # the command line's spelling: no colabkit.runs(...) in a terminal
    # the advice, followed as given: the new run is one that `colabkit runs` lists
    advised = subprocess.run(
        lines[-1].split(", then ", 1)[1].replace("colabkit run", f"{shlex.quote(sys.executable)} -m colabkit run")
        + " --epochs 1 --steps 2",
        shell=True, capture_output=True, text=True,
        env=machine, timeout=120,
    )
    assert advised.returncode == 0, advised.stdout + advised.stderr
    listed = colabkit_cmd("runs", str(project), env=machine)
    assert listed.returncode == 0 and len(list((project / "runs").iterdir())) == 2
    assert sum(" finished " in line for line in listed.stdout.splitlines()) == 2, listed.stdout


@pytest.mark.parametrize("command", [["info"], ["doctor"], ["runs"], ["watch", "-n", "0.05"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(command, machine, tmp_path):
    # `colabkit info | head -1`, made certain: the read end of the pipe is closed before the command writes
    paths = [str(_fake_pynvml(tmp_path / "nvml")), machine.get("PYTHONPATH", "")]  # watch needs a GPU to watch
    env = {**machine, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with (tmp_path / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "colabkit", *command], stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=tmp_path
        )
    proc.stdout.close()
    try:
        rc = proc.wait(timeout=90)
    finally:
        proc.kill()
        proc.wait()
    err = (tmp_path / "stderr").read_text()
    assert (rc, err) == (141, "")  # 128 + SIGPIPE, as cat's; no "Broken pipe", no "Exception ignored"


def test_run_help_tells_timeout_from_budget_and_what_goes_to_the_script():
    out = colabkit_cmd("run", "--help", env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "--timeout TIMEOUT seconds after which the script is stopped like Ctrl-C, wherever it is" in text
    assert "for a run that should save before its time is up, use --budget" in text
    assert "it gets SIGTERM --grace before the end to save a checkpoint" in text
    assert text.endswith(
        "colabkit's options come before SCRIPT; everything after SCRIPT goes to the script, e.g. "
        "colabkit run --budget 2h train.py --epochs 3 --lr 3e-4"
    )


def test_run_without_a_script_names_only_the_script():
    out = colabkit_cmd("run")
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == "colabkit run: error: the following arguments are required: script"


def test_a_failing_script_is_said_once_with_its_log_once(machine, tmp_path):
    (tmp_path / "bad.py").write_text("print('loading')\nraise ValueError('bad label 7')\n")
    (tmp_path / "quits.py").write_text("import sys\nprint('all done')\nsys.exit(3)\n")
    bad = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "bad.py"], capture_output=True, text=True, env=machine, cwd=tmp_path, timeout=90
    )
    assert bad.returncode == 1
    (log,) = (tmp_path / "runs").glob("*-bad/output.log")
    both = bad.stdout + bad.stderr
    assert bad.stdout.splitlines()[-1].startswith("RAM peak ")  # the summary, less what the error says
    assert bad.stderr.splitlines()[-2:] == [
        "colabkit run: bad.py exited with exit status 1",
        f"HINT: Fix the error shown above and run again; the full output is in {log}",
    ]
    assert both.count("exit status 1") == 1 and both.count(str(log)) == 1
    assert both.count("ValueError: bad label 7") == 1
    quits = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "quits.py"], capture_output=True, text=True, env=machine, cwd=tmp_path, timeout=90
    )
    assert quits.returncode == 3
    (log,) = (tmp_path / "runs").glob("*-quits/output.log")
    assert quits.stderr.splitlines()[-2:] == [  # no error shown above: it says so, and where to look
        "colabkit run: quits.py exited with exit status 3",
        "HINT: Its output shows no error: look for what ends it with exit status 3 (sys.exit, exit()), then run "
        f"again; the full output is in {log}",
    ]


def test_attach_with_no_running_run_says_what_there_is_in_the_command_lines_spelling(tmp_path):
    (tmp_path / "runs/20260101-120000-train").mkdir(parents=True)
    (tmp_path / "runs/20260101-120000-train/summary.json").write_text('{"status": "finished", "script": "train.py"}')
    out = subprocess.run(
        [sys.executable, "-m", "colabkit", "attach"], capture_output=True, text=True, cwd=tmp_path, timeout=90
    )
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(
        f"colabkit attach: no run is running in {tmp_path / 'runs'} (latest: 20260101-120000-train (finished))"
    )
    assert "`colabkit attach RUN`" in out.stderr and "colabkit.attach(" not in out.stderr


def test_a_wrong_run_option_is_said_with_the_command_line_options_not_run_arguments(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--grace", "20", "train.py"],
        capture_output=True, text=True, cwd=tmp_path, timeout=90,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (
        2,
        "colabkit run: --grace 20 needs a budget: pass --budget too, e.g. --budget 2h --grace 5m\n",
    )
