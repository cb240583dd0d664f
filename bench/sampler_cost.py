"""Cost of one monitor sample: NVML part per GPU, the whole sample, and the sampler thread's share of a core.

Compares against running ``nvidia-smi --query-gpu`` as a subprocess per sample. Without a GPU it
measures the RAM (psutil) part and says NVML was absent.

    python bench/sampler_cost.py [--samples 2000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from colabkit import _gpu
from colabkit._monitor import Sampler


def cpu_per_call(fn, n: int) -> float:
    """CPU seconds per call of ``fn`` (this thread's CPU time, so a busy machine does not inflate it)."""
    fn()  # warm up
    t0 = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t0) / n


def _thread_cpu(tid: int) -> float | None:
    """CPU seconds of one thread from the scheduler (exact, unlike tick-sampled process times)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as fh:
            return int(fh.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def thread_share(interval: float, seconds: float, csv_path: Path) -> tuple[float, int]:
    """Fraction of one core the sampler thread used at ``interval`` over ``seconds``, and its sample count."""
    sampler = Sampler(interval=interval, pid=os.getpid(), csv_path=csv_path)
    sampler.capture_baseline()
    sampler.start()
    tid = sampler._thread.native_id  # noqa: SLF001 - a benchmark may look inside
    c0, p0, w0, n0 = _thread_cpu(tid), time.process_time(), time.monotonic(), sampler.stats().n_samples
    time.sleep(seconds)
    c1, p1, w1, n1 = _thread_cpu(tid), time.process_time(), time.monotonic(), sampler.stats().n_samples
    sampler.stop()
    cpu = (c1 - c0) if c0 is not None and c1 is not None else (p1 - p0)
    return cpu / (w1 - w0), n1 - n0


def wakeup_cost(interval: float, seconds: float) -> float | None:
    """CPU seconds per wake-up of a thread doing nothing but ``Event.wait(interval)``: this machine's floor."""
    import threading

    stop = threading.Event()
    count = [0]

    def loop() -> None:
        while not stop.is_set():
            count[0] += 1
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="bench-idle")
    thread.start()
    c0, n0 = _thread_cpu(thread.native_id), count[0]
    time.sleep(seconds)
    c1, n1 = _thread_cpu(thread.native_id), count[0]
    stop.set()
    thread.join()
    if c0 is None or c1 is None or n1 == n0:
        return None
    return (c1 - c0) / (n1 - n0)


def nvidia_smi_cost(n: int) -> tuple[float, float] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    cmd = [
        exe,
        "--query-gpu=memory.used,memory.total,utilization.gpu,temperature.gpu,power.draw",
        "--format=csv,noheader,nounits",
    ]
    subprocess.run(cmd, capture_output=True, check=True)
    before = os.times()
    w0 = time.monotonic()
    for _ in range(n):
        subprocess.run(cmd, capture_output=True, check=True)
    wall = (time.monotonic() - w0) / n
    after = os.times()
    cpu = (
        after.user
        + after.system
        + after.children_user
        + after.children_system
        - before.user
        - before.system
        - before.children_user
        - before.children_system
    ) / n
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    source = _gpu.source()
    count = source.device_count()
    us = 1e6
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, GPUs visible to NVML: {count}")
    if count:
        nvml = (
            cpu_per_call(lambda: [(source.read(i), source.processes(i)) for i in range(count)], args.samples)
            / count
        )
        print(
            f"NVML part (memory v2, util, temp, power, process list): {nvml * us:.1f} us per sample per GPU (target <= 50 us)"
        )
    else:
        nvml = None
        print("NVML absent (no driver or no GPU): measuring the RAM/psutil and bookkeeping part only")
    with tempfile.TemporaryDirectory() as tmp:
        sampler = Sampler(interval=1.0, pid=os.getpid(), csv_path=Path(tmp) / "m.csv")
        sampler.capture_baseline()
        whole = cpu_per_call(sampler.sample_once, args.samples)
        sampler.stop()
        print(f"whole sample (NVML + RSS of the process tree + stats + metrics.csv row): {whole * us:.1f} us")
        for interval in (1.0, 0.1):
            seconds = max(args.seconds, 3 * interval)
            share, n = thread_share(interval, seconds, Path(tmp) / f"t{interval}.csv")
            print(
                f"sampler thread at {interval:>3} s: {share * 100:.3f} % of one core ({n} samples in {seconds:.0f} s;"
                f" {share * interval * us:.0f} us per tick)"
                + ("  target <= 0.2 %" if interval == 1.0 else "")
            )
        idle = wakeup_cost(0.1, min(args.seconds, 3.0))
        if idle is not None:
            print(
                f"for scale: an idle thread's Event.wait wake-up costs {idle * us:.0f} us of CPU on this machine"
            )
    smi = nvidia_smi_cost(20)
    if smi is None:
        print("nvidia-smi not found: no subprocess comparison")
    else:
        wall, cpu = smi
        ref = nvml * count if nvml else whole
        print(
            f"nvidia-smi --query-gpu subprocess: {wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms CPU per sample;"
            f" {cpu / ref:,.0f}x the CPU of the NVML part"
            + (f", {cpu / whole:,.0f}x a whole colabkit sample" if nvml else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
