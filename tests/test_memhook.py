"""colabkit._memhook in a real training child with real PyTorch (its CPU build): the optimizer-step hook,
steps.csv, colabkit's running maxima and the OOM observer. Where a GPU would be needed, only the caching
allocator behind torch.cuda is replaced (tests/fakes/torchcuda.py); torch.cuda's own code runs on top.

Each scenario costs a torch import in a child (~3 s), so a few children serve many tests (module fixtures).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from colabkit import _autopsy, _memhook, _steps

TESTS = Path(__file__).resolve().parent
HAVE_TORCH = importlib.util.find_spec("torch") is not None
if not HAVE_TORCH and os.environ.get("COLABKIT_TEST_REQUIRE_TORCH"):
    raise RuntimeError("torch is not installed, but COLABKIT_TEST_REQUIRE_TORCH asks for the torch tests")
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch (pip install torch==2.13.0, the CPU build)")
MIB = 1024**2

# runs the script the way the bootstrap will: install() first, then the script as __main__
BOOT = """
import runpy, sys
from colabkit import _memhook
_memhook.install()
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# A training loop whose "GPU memory" is the stand-in's: each step allocates activations of a known size,
# two optimizers step (a GAN), the script reads torch's peaks as a user would and resets them itself once,
# keeps a tensor per step for a while (creep), and finally asks for more than the GPU has.
SCRIPTED = """
import json, os, sys
import torch
from fakes import torchcuda
MIB = torchcuda.MIB
gpu = torchcuda.install(total=1024 * MIB)
torch.manual_seed(0)
gen, disc = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
opt_g = torch.optim.SGD(gen.parameters(), lr=0.01)
opt_d = torch.optim.Adam(disc.parameters(), lr=0.01)
weights = gpu.alloc(64 * MIB)                                   # LINE weights
readings, expected, kept = [], [], []

def step(i, act_mib, keep_mib=0, reset_midway=False):
    act = gpu.alloc(act_mib * MIB)                              # LINE activations
    if reset_midway:
        spike = gpu.alloc(100 * MIB)
        del spike
        torch.cuda.reset_peak_memory_stats()
    loss = disc(gen(torch.randn(2, 4))).sum()
    loss.backward()
    opt_g.step(); opt_d.step()
    opt_g.zero_grad(); opt_d.zero_grad()
    if keep_mib:
        kept.append(gpu.alloc(keep_mib * MIB))                  # LINE kept
    del act
    readings.append([torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved(),
                     torch.cuda.memory_stats()["allocated_bytes.all.peak"],
                     torch.cuda.memory_stats(0)["active_bytes.large_pool.peak"], torch.cuda.memory_allocated()])

for i in range(6):
    step(i, act_mib=10 * (i + 1), reset_midway=(i == 3))
for i in range(50):
    step(6 + i, act_mib=20, keep_mib=2)
json.dump({"readings": readings, "rows_expected": 56,
           "lines": {k: n for n, line in enumerate(open(__file__), 1) for k in ["weights", "activations", "kept", "oom"]
                     if line.rstrip().endswith("# LINE " + k)},
           "initialized": torch.cuda.is_initialized()},
          open(os.environ["OUT"], "w"))
big = gpu.alloc(2048 * MIB)                                     # LINE oom
"""


def _run(script: Path, cwd: Path, *, hook: bool, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", BOOT, str(script)] if hook else [sys.executable, str(script)]
    return subprocess.run(cmd, cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """The scripted loop twice: under the hook (steps, OOM record, allocation history) and plainly."""
    if not HAVE_TORCH:
        pytest.skip("needs torch")
    folder = tmp_path_factory.mktemp("scripted")
    script = folder / "train.py"
    script.write_text(SCRIPTED)
    hooked = _run(script, folder, hook=True, env={
        "OUT": str(folder / "hooked.json"),
        _memhook.STEPS_ENV: str(folder / "steps.csv"),
        _memhook.OOM_ENV: str(folder),
        _memhook.HISTORY_ENV: "1",
    })  # fmt: skip
    plain = _run(script, folder, hook=False, env={"OUT": str(folder / "plain.json")})
    return folder, hooked, plain


@needs_torch
def test_the_script_reads_the_same_peaks_with_and_without_the_hook(scripted):
    folder, hooked, plain = scripted
    assert "OutOfMemoryError" in hooked.stderr and "OutOfMemoryError" in plain.stderr
    with_hook = json.loads((folder / "hooked.json").read_text())
    without = json.loads((folder / "plain.json").read_text())
    assert with_hook["readings"] == without["readings"]  # every max_memory_*, memory_stats peak, after its own reset too
    assert with_hook["readings"][0][0] == 74 * MIB  # the loop really allocated: weights 64 + activations 10
    assert with_hook["readings"][3][0] == with_hook["readings"][4][0] - 10 * MIB  # the script's reset was honoured


@needs_torch
def test_one_row_per_step_of_the_first_optimizer_with_exact_peaks(scripted):
    folder, _, _ = scripted
    rows = _steps.read_steps(folder / _steps.FILE)
    assert [r.step for r in rows] == list(range(1, 57))  # two optimizers step each time: one row per iteration
    assert [r.peak_allocated for r in rows[:6]] == [
        (64 + 10) * MIB, (64 + 20) * MIB, (64 + 30) * MIB,
        (64 + 40 + 100) * MIB,  # the spike before the script's own reset still counts for colabkit's step peak
        (64 + 50) * MIB, (64 + 60) * MIB,
    ]  # fmt: skip
    assert [r.allocated for r in rows[:2]] == [(64 + 10) * MIB, (64 + 20) * MIB]  # activations still held at step()
    assert rows[10].min_allocated == (64 + 20 + 4 * 2) * MIB  # step 11: four tensors of 2 MiB kept so far
    assert all(r.n == 1 and r.device == 0 for r in rows)
    assert rows[-1].mono_s > rows[0].mono_s and rows[0].t_s > 0
    assert all(r.reserved >= r.allocated for r in rows)


@needs_torch
def test_the_oom_observer_records_the_request_the_holders_and_a_bounded_snapshot(scripted):
    folder, hooked, _ = scripted
    report = json.loads((folder / "oom.json").read_text())
    lines = json.loads((folder / "hooked.json").read_text())["lines"]
    (event,) = report["events"]
    assert event["requested"] == 2048 * MIB and event["step"] == 56
    assert event["allocated"] == (64 + 50 * 2) * MIB  # weights and the kept tensors: all that was live
    assert report["history"] is True and report["gpu"] == {"name": "Tesla T4", "total_memory": 1024 * MIB, "capability": [7, 5]}
    snapshot = folder / "oom_snapshot.pickle"
    assert 0 < snapshot.stat().st_size <= _memhook.MAX_SNAPSHOT_BYTES
    autopsy = _autopsy.load(folder, rows=_steps.read_steps(folder / "steps.csv"))
    assert autopsy.failed_at == f"train.py:{lines['oom']} in <module>"
    top = {h.where: (h.bytes, h.blocks) for h in autopsy.holders}
    assert top[f"train.py:{lines['weights']} in <module>"] == (64 * MIB, 1)
    assert top[f"train.py:{lines['kept']} in step"] == (50 * 2 * MIB, 50)
    assert autopsy.fix()[0] == "kept_tensor"  # the floor grew by 100 MiB over 56 steps of a 1 GiB GPU


@needs_torch
def test_a_cpu_script_gets_rows_without_memory_and_no_cuda(tmp_path):
    script = tmp_path / "cpu.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import torch
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(4):
            model(torch.randn(2, 3)).sum().backward()
            opt.step(); opt.zero_grad()
        print(json.dumps({"cuda": torch.cuda.is_initialized(), "loader": type(torch.__spec__.loader).__name__,
                          "finders": [type(f).__name__ for f in sys.meta_path],
                          "env": sorted(k for k in os.environ if k.startswith("COLABKIT_CHILD"))}))
    """))  # fmt: skip
    out = _run(script, tmp_path, hook=True, env={_memhook.STEPS_ENV: str(tmp_path / "steps.csv")})
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {"cuda": False, "loader": "SourceFileLoader", "finders": seen["finders"], "env": []}
    assert "_TorchFinder" not in seen["finders"]  # the finder took itself out once torch was imported
    rows = _steps.read_steps(tmp_path / "steps.csv")
    assert [(r.step, r.allocated, r.peak_allocated) for r in rows] == [(i, None, None) for i in range(1, 5)]


def test_nothing_asked_nothing_installed():
    env = {"PATH": "/bin"}
    assert _memhook.install(env) is None and env == {"PATH": "/bin"}


def test_the_variables_are_taken_out_of_the_environment(tmp_path):
    env = {_memhook.STEPS_ENV: str(tmp_path / "s.csv"), _memhook.PROBE_ENV: "3", _memhook.HISTORY_ENV: "1", "X": "1"}
    watch = _memhook.install(env)
    try:
        assert env == {"X": "1"}
        assert (watch.probe_steps, watch.history, watch.oom_dir) == (3, True, None)
    finally:
        watch.disarm()


def test_rows_double_their_span_after_each_block(tmp_path, monkeypatch):
    monkeypatch.setattr(_memhook, "FULL_ROWS", 4)
    rows = _memhook._Rows(str(tmp_path / "steps.csv"), t0=100.0)
    for step in range(1, 29):  # 4 rows of 1 step, 4 of 2, then 4 of 4 (= 28 steps)
        mem = (0, step * MIB, 2 * step * MIB, step * MIB + 7, 2 * step * MIB)
        rows.add(step, 100.0 + step, mem)
    rows.close()
    got = _steps.read_steps(tmp_path / "steps.csv")
    assert [(r.step, r.n) for r in got] == [(1, 1), (2, 1), (3, 1), (4, 1), (6, 2), (8, 2), (10, 2), (12, 2),
                                            (16, 4), (20, 4), (24, 4), (28, 4)]  # fmt: skip
    assert got[-1].peak_allocated == 28 * MIB + 7 and got[-1].min_allocated == 25 * MIB  # the row's max and min
    assert got[0].t_s == 1.0 and got[0].mono_s == 101.0


def test_the_running_maxima_survive_a_reset_and_report_the_largest_peak():
    class C:  # the allocator's two entry points, as torch._C has them
        def __init__(self):
            self.current, self.peak = 10, 50

        def _cuda_memoryStats(self, device):
            stat = {"current": self.current, "peak": self.peak, "allocated": 0, "freed": 0}
            return {"allocated_bytes": {"all": dict(stat)}, "reserved_bytes": {"all": dict(stat)},
                    "oversize_allocations": dict(stat), "num_ooms": 0}  # fmt: skip

        def _cuda_resetPeakMemoryStats(self, device):
            self.peak = self.current

    c = C()
    torch = type("T", (), {"_C": c})
    counters = _memhook._Counters(torch)
    assert counters.read(0) == (0, 10, 10, 50, 50)  # the peak since the start, then the counters restart
    assert c.peak == 10
    assert c._cuda_memoryStats(0)["allocated_bytes"]["all"]["peak"] == 50  # the script still sees 50
    assert c._cuda_memoryStats(0)["oversize_allocations"]["peak"] == 50
    c.peak = 30  # a spike of 30 after colabkit's reset, then the script resets
    c._cuda_resetPeakMemoryStats(0)
    assert c._cuda_memoryStats(0)["allocated_bytes"]["all"]["peak"] == 10  # its own reset: from now
    assert counters.read(0)[3] == 30  # colabkit's step peak keeps the spike the script's reset took away


def test_each_torchrun_rank_but_the_first_writes_files_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    tmp_path = tmp_path / "run"
    tmp_path.mkdir()
    watch = _memhook.Watch(str(tmp_path / "steps.csv"), str(tmp_path))
    optimizer = type("Optimizer", (), {})()
    watch.on_step(optimizer)
    watch.close()
    assert [p.name for p in tmp_path.iterdir()] == ["steps-rank1.csv"]
    monkeypatch.setenv("RANK", "0")
    assert _memhook.Watch(str(tmp_path / "steps.csv"), str(tmp_path)).rows.path == str(tmp_path / "steps.csv")
