"""run() with the memory monitor, end to end: the real bootstrap and supervisor, real torch (CPU build) where a
script uses it, the stand-in allocator (tests/fakes/torchcuda.py) where a GPU would be needed, and the scripted
NVML for the device numbers the sampler reads."""

from __future__ import annotations

import importlib.util
import json
import os
import textwrap
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fakes.nvml import FakeDevice, FakeNvml

from colabkit import _nvml, _run, _timeline
from colabkit._spec import RunSpec
from colabkit.errors import CudaOutOfMemory, RunFailed

TESTS = Path(__file__).resolve().parent
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch (pip install torch==2.13.0, the CPU build)")
MIB = 1024**2
GIB = 1024**3


def go(folder: Path, body: str, *args, observer=None, **options):
    (folder / "train.py").write_text(textwrap.dedent(body))
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return _run.execute(RunSpec.build("train.py", args, env=env, observer=observer, check=False, interval=0.05, **options))


def line_of(body: str, tag: str) -> int:
    return next(i for i, text in enumerate(textwrap.dedent(body).splitlines(), 1) if text.endswith(f"# LINE {tag}"))


KEEPS = """
    import torch
    from fakes import torchcuda
    gpu = torchcuda.install(total=256 * torchcuda.MIB, context=0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = []
    for step in range(100000):
        act = gpu.alloc(8 * torchcuda.MIB)
        model(torch.randn(2, 4)).sum().backward()
        opt.step(); opt.zero_grad()
        kept.append(gpu.alloc(2 * torchcuda.MIB))  # LINE kept
        del act
"""


@needs_torch
def test_an_oom_says_what_held_the_memory_and_the_next_run_records_the_lines(proj, capsys):
    first = go(proj, KEEPS)
    assert (first.status, first.oom) == ("failed", "pytorch")
    err = first.error()
    assert isinstance(err, CudaOutOfMemory)
    kept = line_of(KEEPS, "kept")
    assert f"asked for 2.0 MiB more at train.py:{kept} in <module>, after " in err.message
    assert "live blocks (no source lines: allocation history was off)" in err.message
    assert err.hint.startswith("A tensor is kept across steps: what stays allocated after each step grew from ")
    assert "Allocation history was off (it costs time on every allocation): the next run of this script records it" in err.hint
    assert err.message.startswith("train.py ran out of GPU memory (PyTorch): peak seen 240.0 MiB of 256.0 MiB")  # no NVML here
    summary = json.loads((first.log_dir / "summary.json").read_text())
    assert summary["memory"]["oom_fix"] == "kept_tensor" and summary["memory"]["memory_history"] is False
    assert summary["memory"]["steps"] == first.memory.steps.steps > 100
    for name in ("steps.csv", "oom.json", "oom_snapshot.pickle", "memory.svg"):
        assert (first.log_dir / name).is_file(), name
    assert "out of memory" in "".join(ET.fromstring((first.log_dir / "memory.svg").read_text()).itertext())
    capsys.readouterr()

    second = go(proj, KEEPS)  # memory_history=None: on, because the last run of train.py ran out without it
    assert "allocation history is on for this run (memory_history=True)" in capsys.readouterr().out
    autopsy = second.memory.autopsy
    assert autopsy.history is True
    assert autopsy.holders[0].where == f"train.py:{kept} in <module>"
    assert autopsy.holders[0].bytes == autopsy.holders[0].blocks * 2 * MIB and autopsy.holders[0].blocks > 100
    assert f"train.py:{kept} in <module>" in second.error().message
    assert "Allocation history was on: the lines above allocated what was live." in second.error().hint
    assert second.error().hint.endswith(f"memory_viz: {second.log_dir / 'oom_snapshot.pickle'}")
    assert json.loads((second.log_dir / "summary.json").read_text())["memory"]["memory_history"] is True
    third = go(proj, KEEPS, memory_history=False)  # asked off: off
    assert third.memory.history is False


CONTRACT = """
    import signal, time
    import torch
    from fakes import torchcuda
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))  # the checkpoint contract: a flag, then save
    gpu = torchcuda.install(total=1024 * torchcuda.MIB, context=0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = []
    for step in range(100000):
        model(torch.randn(2, 4)).sum().backward()
        opt.step(); opt.zero_grad()
        kept.append(gpu.alloc(2 * torchcuda.MIB))
        if stop:
            open("saved.txt", "w").write(str(step))
            raise SystemExit(0)
        time.sleep(0.01)
"""


@needs_torch
def test_creep_warns_once_and_a_script_with_the_checkpoint_contract_is_told_to_save(proj, monkeypatch):
    monkeypatch.setenv("COLABKIT_DISPLAY", "terminal")
    statuses = []
    lib = FakeNvml([FakeDevice(total=1 * GIB, used=[300 * MIB, 400 * MIB, 500 * MIB, 600 * MIB])])
    with _nvml._use_library(lib):
        r = go(proj, CONTRACT, resume=True, observer=lambda state: statuses.append(state.status_text))
    assert (r.status, r.reason, r.returncode) == ("stopped", "creep", 0)
    assert (proj / "saved.txt").is_file()
    log = r.log_path.read_text()
    assert log.count("memory grows ≈2.0 MiB/step; at this rate the GPU is full in ≈") == 1
    assert "sent SIGTERM so the script saves a checkpoint, as a budget does" in log
    err = r.error()
    assert isinstance(err, RunFailed) and not isinstance(err, CudaOutOfMemory)
    assert err.message.startswith("train.py was stopped after ")
    assert "before it ran out of GPU memory (it exited 0 on SIGTERM): memory grows ≈2.0 MiB/step" in err.message
    assert err.hint.startswith("Keep numbers, not tensors, from one step to the next, then run again with resume=True")
    assert r.memory.creep is not None and "creep: memory grows" in r.summary()
    bars = set(_timeline.BARS)
    sparked = [s for s in statuses if s and set(s.split(" · ")[-1]) <= bars]
    assert sparked, statuses[-5:]  # the terminal's status line carries the sparkline


def test_the_chart_in_a_notebook_cell_is_redrawn_in_place_from_the_cells_thread(proj, monkeypatch):
    import IPython.display

    monkeypatch.setenv("COLABKIT_DISPLAY", "notebook")
    charts = []

    class Handle:
        def __init__(self, data):
            self.first = data

        def update(self, data, raw=False):
            if "image/svg+xml" in data:
                charts.append(("update", data["image/svg+xml"], threading.current_thread() is threading.main_thread()))

    def fake_display(data, raw=False, display_id=None):
        if "image/svg+xml" in data:
            charts.append(("display", data["image/svg+xml"], threading.current_thread() is threading.main_thread()))
        return Handle(data)

    monkeypatch.setattr(IPython.display, "display", fake_display)
    lib = FakeNvml([FakeDevice(used=[1 * GIB, 2 * GIB, 3 * GIB])])
    with _nvml._use_library(lib):
        r = go(proj, "import time\ntime.sleep(0.5)\n")
    assert r.ok
    assert [c[0] for c in charts][:1] == ["display"] and charts[-1][0] == "update"
    assert all(on_main for _, _, on_main in charts)
    final = "".join(ET.fromstring(charts[-1][1]).itertext())
    assert "train.py: finished" in final and "GPU0 used" in final
    assert charts[-1][1] == (r.log_dir / "memory.svg").read_text()  # the same chart is saved


@needs_torch
def test_a_cpu_run_records_its_steps_in_the_summary(proj):
    r = go(proj, """
        import torch
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(25):
            model(torch.randn(2, 3)).sum().backward(); opt.step(); opt.zero_grad()
    """, "--batch-size", "8")  # fmt: skip
    assert r.ok and r.memory.steps.steps == 25
    summary = json.loads((r.log_dir / "summary.json").read_text())["memory"]
    assert summary["steps"] == 25 and summary["steps_per_s"] > 0 and summary["step_peak_max_bytes"] is None
    assert "batch_estimate" not in summary  # no GPU memory, no estimate
    assert "steps: 25 optimizer steps (" in r.summary()


PLAIN = """
    import argparse, sys
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int)
    a = p.parse_args()
    if a.batch_size > 40:
        sys.exit("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
    print("trained at", a.batch_size)
"""


def test_find_batch_measures_first_and_the_run_keeps_its_arguments(proj, capsys):
    r = go(proj, PLAIN, "--batch-size", "16", find_batch=True)
    out = capsys.readouterr().out
    assert "colabkit: find_batch: probing from --batch-size 16 at doubling sizes" in out
    assert "colabkit: find_batch: --batch-size 64: out of memory" in out
    assert r.ok and r.log_path.read_text() == "trained at 16\n"
    assert r.batch_search.largest == 40 and r.memory.search is r.batch_search
    assert "batch: measured: the largest batch that fits is 40 (--batch-size 40)" in r.summary()
    memory = json.loads((r.log_dir / "summary.json").read_text())["memory"]
    assert (memory["batch_measured"], memory["batch"]) == (40, 16)
    assert sorted(p.name for p in (r.log_dir / "find_batch").iterdir() if p.suffix == ".log") == [
        "probe-16.log", "probe-32.log", "probe-40.log", "probe-48.log", "probe-64.log",
    ]  # fmt: skip


def test_find_batch_without_a_batch_size_is_refused_before_anything_runs(proj):
    with pytest.raises(ValueError, match="find_batch=True needs the batch size among the script's arguments"):
        go(proj, PLAIN, "--epochs", "3", find_batch=True)
    assert not (proj / "runs").exists()


def test_the_command_line_takes_the_same_options(proj, capsys):
    from colabkit import cli

    (proj / "train.py").write_text(textwrap.dedent(PLAIN))
    assert cli.main(["run", "--find-batch", "train.py", "--epochs", "1"]) == 2
    assert "colabkit run: --find-batch needs the batch size among the script's arguments" in capsys.readouterr().err
    assert cli.main(["run", "--no-memory-history", "train.py", "--batch-size", "8"]) == 0
    (run_dir,) = (proj / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["memory"]["memory_history"] is False
