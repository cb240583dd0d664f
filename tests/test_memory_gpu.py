"""The memory monitor on a real NVIDIA GPU with real PyTorch (CUDA build): per-step peaks against torch's own,
a real out-of-memory error, a real creep, find_batch on a small CNN, and the GPU check's real CUDA operation.

Every test is marked ``gpu`` (skipped without one). The scripts cap themselves with
``torch.cuda.set_per_process_memory_fraction`` so that an OOM comes within seconds on any GPU size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from colabkit import _findbatch, _fit, _memhook, _run, _steps, _torch
from colabkit._spec import RunSpec
from colabkit.errors import CudaOutOfMemory

pytestmark = pytest.mark.gpu
TESTS = Path(__file__).resolve().parent
MIB = 1024**2


def run_script(tmp_path: Path, text: str, *args: str, hook: bool = True, history: bool = False, out: str = "out.json"):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(text))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / out)}
    if hook:
        env.update({_memhook.STEPS_ENV: str(tmp_path / "steps.csv"), _memhook.OOM_ENV: str(tmp_path)})
        if history:
            env[_memhook.HISTORY_ENV] = "1"
    cmd = [sys.executable, "-m", "colabkit._child", str(script), *args] if hook else [sys.executable, str(script), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


PEAKS = """
    import json, os
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    own = []
    for step in range(30):
        torch.cuda.reset_peak_memory_stats()
        x = torch.randn(64 * (1 + step % 4), 1024, device="cuda")  # the batch varies: so do the peaks
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        own.append(torch.cuda.max_memory_allocated())  # the script's own per-step peak
        opt.zero_grad(set_to_none=True)
    json.dump({"own": own, "max": torch.cuda.max_memory_allocated(), "reserved": torch.cuda.max_memory_reserved()},
              open(os.environ["OUT"], "w"))
"""


def test_per_step_peaks_equal_torchs_own_within_one_percent(tmp_path):
    hooked = run_script(tmp_path, PEAKS)
    assert hooked.returncode == 0, hooked.stderr
    own = json.loads((tmp_path / "out.json").read_text())["own"]
    rows = _steps.read_steps(tmp_path / "steps.csv")
    assert [r.step for r in rows] == list(range(1, 31))
    for r, mine in zip(rows, own, strict=True):
        assert r.peak_allocated == pytest.approx(mine, rel=0.01), r.step
    plain = run_script(tmp_path, PEAKS, hook=False, out="plain.json")
    assert plain.returncode == 0, plain.stderr
    with_hook, without = json.loads((tmp_path / "out.json").read_text()), json.loads((tmp_path / "plain.json").read_text())
    assert with_hook["own"] == pytest.approx(without["own"], rel=0.01)  # the script reads what it would without colabkit
    assert with_hook["max"] == pytest.approx(without["max"], rel=0.01)


OOM = """
    import torch
    torch.cuda.set_per_process_memory_fraction(min(1.0, 4 * 1024**3 / torch.cuda.get_device_properties(0).total_memory))
    model = torch.nn.Linear(256, 256).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kept = []
    for step in range(100000):
        loss = model(torch.randn(32, 256, device="cuda")).sum()
        loss.backward(); opt.step(); opt.zero_grad()
        kept.append(torch.empty(256 * 1024**2, dtype=torch.uint8, device="cuda"))  # LINE kept
"""


def test_a_real_oom_is_explained_with_the_line_that_held_the_memory(tmp_path, monkeypatch):
    # through run() itself: NVML's numbers, the bootstrap, the supervisor, the autopsy in the error
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_run, "_project_dir", lambda: None)
    (tmp_path / "train.py").write_text(textwrap.dedent(OOM))
    r = _run.execute(RunSpec.build("train.py", (), memory_history=True, check=False, interval=0.2))
    assert (r.status, r.oom) == ("failed", "pytorch")
    kept_line = next(i for i, line in enumerate(textwrap.dedent(OOM).splitlines(), 1) if line.endswith("# LINE kept"))
    assert (r.log_dir / "oom_snapshot.pickle").stat().st_size <= _memhook.MAX_SNAPSHOT_BYTES
    autopsy = r.memory.autopsy
    assert autopsy.failed_at == f"train.py:{kept_line} in <module>"
    top = autopsy.holders[0]
    assert top.where == f"train.py:{kept_line} in <module>" and top.bytes >= 10 * 256 * MIB
    assert autopsy.fix()[0] == "kept_tensor"
    assert autopsy.creep is not None and autopsy.creep.rate_per_step == pytest.approx(256 * MIB, rel=0.05)
    err = r.error()
    assert isinstance(err, CudaOutOfMemory) and f"train.py:{kept_line} in <module>" in err.message
    assert (r.log_dir / "memory.svg").is_file() and r.stats.peak_used_bytes is not None


CREEP = """
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 1)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for step in range(120):
        loss = model(torch.randn(1024, 512, device="cuda")).mean()
        loss.backward(); opt.step(); opt.zero_grad()
        losses.append(model(torch.randn(1024, 512, device="cuda")).mean())  # keeps a graph alive every step
"""


def test_a_real_creep_is_seen_with_its_rate(tmp_path):
    out = run_script(tmp_path, CREEP)
    assert out.returncode == 0, out.stderr
    rows = _steps.read_steps(tmp_path / "steps.csv")
    total = int(json.loads(subprocess.check_output(
        [sys.executable, "-c", "import torch, json; print(json.dumps(torch.cuda.get_device_properties(0).total_memory))"]
    )))  # fmt: skip
    creep = _steps.detect_creep(rows, total)
    assert creep is not None
    grew = (rows[-1].min_allocated - rows[10].min_allocated) / (rows[-1].step - rows[10].step)
    assert creep.rate_per_step == pytest.approx(grew, rel=0.1)
    assert creep.rate_per_step >= 1024 * 2048 * 4  # at least the kept hidden activations (4 MiB) per step


CNN = """
    import argparse
    import torch
    p = argparse.ArgumentParser(); p.add_argument("--batch-size", type=int); a = p.parse_args()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 3 * 1024**3 / torch.cuda.get_device_properties(0).total_memory))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).cuda()
    opt = torch.optim.Adam(model.parameters())
    for step in range(1000):
        x = torch.randn(a.batch_size, 3, 128, 128, device="cuda")
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (a.batch_size,), device="cuda"))
        loss.backward(); opt.step(); opt.zero_grad()
"""


def test_find_batch_on_a_small_cnn(tmp_path):
    (tmp_path / "train.py").write_text(textwrap.dedent(CNN))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arg = _fit.find_batch_arg(["--batch-size", "8"])
    found = _findbatch.find_batch("train.py", ["--batch-size", "8"], arg, cwd=tmp_path, out_dir=tmp_path / "fb",
                                  env=env, total_bytes=3 * 1024**3)  # fmt: skip
    assert found.error is None and found.largest is not None and found.largest >= 8
    by_batch = {p.batch: p for p in found.probes}
    assert by_batch[found.largest].fits and by_batch[found.largest].steps == _findbatch.PROBE_STEPS
    assert any(p.fits is False and p.ended == "oom" and p.batch > found.largest for p in found.probes)
    assert by_batch[found.largest].peak_reserved <= 3 * 1024**3


def test_the_gpu_check_runs_a_real_cuda_operation():
    status = _torch.torch_status(timeout=120)
    assert status.available and status.op_ok is True and status.kernels_fit is True, status
    assert status.describe().endswith(f"ran a CUDA operation on sm_{status.capability[0]}{status.capability[1]}")
