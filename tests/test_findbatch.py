"""colabkit._findbatch: probe runs at doubling batch sizes in fresh child processes, framework-free and with torch."""

from __future__ import annotations

import importlib.util
import os
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from colabkit import _findbatch, _fit

TESTS = Path(__file__).resolve().parent
HAVE_TORCH = importlib.util.find_spec("torch") is not None
MIB = 1024**2

# no framework at all: "runs out of memory" above 40, in PyTorch's words
PLAIN = """
import argparse, sys, time
p = argparse.ArgumentParser()
p.add_argument("--batch-size", type=int)
p.add_argument("--sleep", type=float, default=0)
a = p.parse_args()
if a.batch_size > 40:
    sys.exit("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")
time.sleep(a.sleep)
print("trained at", a.batch_size)
"""


def search(tmp_path, script_text, args, **kw):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(script_text))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), str(tmp_path)])}
    arg = _fit.find_batch_arg(args)
    seen = []
    found = _findbatch.find_batch("train.py", args, arg, cwd=tmp_path, out_dir=tmp_path / "find_batch", env=env,
                                  report=seen.append, **kw)  # fmt: skip
    assert [p.batch for p in seen] == [p.batch for p in sorted(found.probes, key=lambda p: seen.index(p))]
    return found, seen


def test_doubling_then_bisecting_finds_the_largest_batch(tmp_path):
    found, seen = search(tmp_path, PLAIN, ["--batch-size", "8"])
    assert [(p.batch, p.fits, p.ended) for p in seen] == [
        (8, True, "exited"), (16, True, "exited"), (32, True, "exited"), (64, False, "oom"), (48, False, "oom"),
        (40, True, "exited"),
    ]  # fmt: skip
    assert (found.largest, found.recommended, found.error) == (40, 40, None)
    assert found.describe() == (
        "measured: the largest batch that fits is 40 (--batch-size 40) (probes: 8: fits; 16: fits; 32: fits; "
        "40: fits; 48: out of memory; 64: out of memory)"
    )
    assert (tmp_path / "find_batch" / "probe-64.log").read_text().startswith("torch.OutOfMemoryError")
    assert found.to_json()["batch_probes"] == [[8, True, None], [16, True, None], [32, True, None], [40, True, None],
                                               [48, False, None], [64, False, None]]  # fmt: skip


def test_a_batch_too_large_from_the_start_halves_until_one_fits(tmp_path):
    found, seen = search(tmp_path, PLAIN, ["--batch-size=200"])
    assert [p.batch for p in seen] == [200, 100, 50, 25, 37, 43]  # halving, then two bisections between 25 and 50
    assert found.largest == 37 and found.probes[0].batch == 25


def test_a_probe_that_fails_otherwise_stops_the_search(tmp_path):
    found, seen = search(tmp_path, "import sys\nsys.exit('error: unrecognized arguments: --batch-size')\n", ["-b", "8"])
    assert [(p.batch, p.fits) for p in seen] == [(8, None)]
    assert found.largest is None
    assert found.error == "the probe at -b 8 failed: error: unrecognized arguments: --batch-size"
    assert found.describe().startswith("find_batch stopped: the probe at -b 8 failed")


def test_a_probe_still_training_at_its_timeout_fits_and_is_ended(tmp_path):
    found, seen = search(tmp_path, PLAIN, ["--batch-size", "32", "--sleep", "60"], probe_timeout=1.0, max_probes=3)
    assert [(p.batch, p.fits, p.ended) for p in seen] == [(32, True, "timeout"), (64, False, "oom"), (48, False, "oom")]
    assert seen[0].seconds < 30  # SIGINT ended the sleeping script (the no_leaks fixture checks nothing is left)
    assert found.largest == 32


@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch (pip install torch==2.13.0, the CPU build)")
def test_torch_probes_stop_after_their_steps_and_measure_the_peak(tmp_path):
    # each probe: real torch, real optimizer steps under the real bootstrap (python -m colabkit._child);
    # the "GPU" is the stand-in allocator (1 GiB, no context)
    script = """
        import argparse
        import torch
        from fakes import torchcuda
        p = argparse.ArgumentParser()
        p.add_argument("--batch-size", type=int)
        a = p.parse_args()
        gpu = torchcuda.install(total=1024 * torchcuda.MIB, context=0)
        weights = gpu.alloc(64 * torchcuda.MIB)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(100000):  # far more than a probe runs
            act = gpu.alloc(a.batch_size * 8 * torchcuda.MIB)
            model(torch.randn(a.batch_size, 4)).sum().backward()
            opt.step(); opt.zero_grad()
            del act
    """
    found, seen = search(tmp_path, script, ["--batch-size", "64"], total_bytes=1024 * MIB)
    assert [(p.batch, p.fits, p.ended, p.steps) for p in seen] == [
        (64, True, "steps", 3), (128, False, "oom", 0), (96, True, "steps", 3), (112, True, "steps", 3),
    ]  # fmt: skip
    assert seen[0].peak_allocated == (64 + 64 * 8) * MIB  # torch's own per-step peak, from the probe's steps.csv
    assert seen[3].peak_reserved == (64 + 112 * 8) * MIB
    # 112 fits but leaves less than 10 % of the GPU free; 96 keeps the margin
    assert (found.largest, found.recommended) == (112, 96)
    assert found.describe().endswith("; with a 10% margin, 96 (probes: 64: fits, 576.0 MiB; 96: fits, 832.0 MiB; "
                                     "112: fits, 960.0 MiB; 128: out of memory)")  # fmt: skip
