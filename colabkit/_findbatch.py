"""``run(..., find_batch=True)``: the largest batch that fits, measured with short probe runs in fresh child processes.

Each probe runs the script as ``run()`` would (through the child bootstrap) with its batch size replaced,
until it has done ``probe_steps`` optimizer steps (the bootstrap's step hook then ends it, exit 0), or it
ends by itself, or ``probe_timeout`` passes. A probe whose output holds a CUDA out-of-memory error did not
fit; any other failure stops the search. Without torch (no steps) a probe that ran ``probe_timeout``
seconds without running out of memory fits: the search needs nothing of the framework but the batch
argument. Sizes double from the given one until one does not fit (or halve until one does), then two
bisections narrow the step. Each probe is a fresh process, so none inherits another's cached memory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _format, _oom
from ._fit import MARGIN, BatchArg
from ._steps import read_steps

__all__ = ["MAX_FACTOR", "PROBE_STEPS", "PROBE_TIMEOUT_S", "BatchSearch", "Probe", "before_run", "find_batch"]

PROBE_STEPS = 3  # optimizer steps a probe runs: the first allocates optimizer state, the next ones show the peak
PROBE_TIMEOUT_S = 180.0
MAX_PROBES = 8
MAX_FACTOR = 64  # never probe beyond this many times the given batch
BISECTIONS = 2
_STOP_WAIT_S = 5.0  # between SIGINT, SIGTERM and SIGKILL when a probe is ended
_TAIL = 64 * 1024


@dataclass(frozen=True)
class Probe:
    """One probe: the batch it ran, whether it fit, and what it used (bytes)."""

    batch: int
    fits: bool | None  # None: it failed for another reason than memory
    ended: str  # "steps" | "exited" | "timeout" | "oom" | "error"
    steps: int = 0
    seconds: float = 0.0
    peak_allocated: int | None = None  # torch's highest per-step peak
    peak_reserved: int | None = None
    device_peak: int | None = None  # the GPU memory the probe's processes held at most (NVML)
    returncode: int | None = None
    error: str | None = None  # the last line of its output, when it failed
    log: Path | None = None

    @property
    def peak(self) -> int | None:
        """The most the probe held on the GPU: NVML's count if there is one, else torch's reserved peak."""
        return self.device_peak if self.device_peak is not None else self.peak_reserved

    def describe(self) -> str:
        used = f", {_format.format_bytes(self.peak)}" if self.peak is not None else ""
        verdict = {True: "fits", False: "out of memory", None: f"failed ({self.error or self.ended})"}[self.fits]
        return f"{self.batch}: {verdict}{used}"


@dataclass(frozen=True)
class BatchSearch:
    """What the probes measured: ``largest`` ran without running out of memory; ``recommended`` also keeps
    ``MARGIN`` of the GPU free (when the GPU's total is known)."""

    arg: BatchArg
    probes: tuple[Probe, ...]
    largest: int | None
    recommended: int | None
    total_bytes: int | None = None
    error: str | None = None  # why the search stopped early

    def describe(self) -> str:
        tried = "; ".join(p.describe() for p in self.probes)
        if self.largest is None:
            head = f"measured: no {self.arg.flag} fits" if self.error is None else f"find_batch stopped: {self.error}"
        else:
            head = f"measured: the largest batch that fits is {self.largest} ({self.arg.spelled(self.largest)})"
            if self.recommended is not None and self.recommended != self.largest:
                head += f"; with a {MARGIN:.0%} margin, {self.recommended}"
        return f"{head} (probes: {tried})"

    def to_json(self) -> dict[str, object]:
        return {
            "batch_flag": self.arg.flag,
            "batch": self.arg.value,
            "batch_measured": self.largest,
            "batch_recommended": self.recommended,
            "batch_probes": [[p.batch, p.fits, p.peak] for p in self.probes],
        }


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT, SIGTERM, then SIGKILL to the probe's process group, waiting between them."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            break
        try:
            proc.wait(_STOP_WAIT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _sweep(pgid: int) -> None:
    """SIGKILL whatever the probe left in its group (data-loader workers)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - _TAIL))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _probe(
    batch: int,
    *,
    arg: BatchArg,
    script: str,
    args: Sequence[str],
    python: str,
    cwd: Path,
    env: Mapping[str, str],
    out_dir: Path,
    probe_steps: int,
    timeout: float,
    bootstrap: str,
    sampler: Callable[[], Any] | None,
) -> Probe:
    steps_path = out_dir / f"steps-{batch}.csv"
    log_path = out_dir / f"probe-{batch}.log"
    for stale in (steps_path, log_path):
        stale.unlink(missing_ok=True)
    child_env = {**env, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    child_env.update({"COLABKIT_CHILD_STEPS": str(steps_path), "COLABKIT_CHILD_PROBE_STEPS": str(probe_steps)})
    cmd = [python, "-m", bootstrap, script, *arg.replaced(args, batch)]
    mon = sampler() if sampler is not None else None
    if mon is not None:
        mon.capture_baseline()
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=str(cwd), env=child_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    ended = None
    try:
        if mon is not None:
            mon.watch(proc.pid)
            mon.start()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            ended = "timeout"
            _end_group(proc)
    except BaseException:  # Stop pressed during a probe: end it before going up
        _end_group(proc)
        raise
    finally:
        _sweep(proc.pid)
        stats = mon.stop() if mon is not None else None
    seconds = time.monotonic() - start
    rows = read_steps(steps_path)
    text = _tail(log_path)
    peaks = [r.peak_allocated for r in rows if r.peak_allocated is not None]
    reserved = [r.peak_reserved for r in rows if r.peak_reserved is not None]
    facts: dict[str, Any] = {
        "steps": rows[-1].step if rows else 0,
        "seconds": seconds,
        "peak_allocated": max(peaks) if peaks else None,
        "peak_reserved": max(reserved) if reserved else None,
        "device_peak": stats.child_peak_gpu_bytes if stats is not None else None,
        "returncode": proc.returncode,
        "log": log_path,
    }
    if _oom.detect(text):
        return Probe(batch, False, "oom", **facts)
    if ended == "timeout":
        return Probe(batch, True, "timeout", **facts)
    if proc.returncode == 0:
        return Probe(batch, True, "steps" if facts["steps"] >= probe_steps else "exited", **facts)
    last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), "no output")
    return Probe(batch, None, "error", error=last.strip()[:300], **facts)


def before_run(spec: Any, args: Sequence[str], cwd: Path, env: Mapping[str, str], run_dir: Path, sampler: Any) -> BatchSearch:
    """``run(..., find_batch=True)``: the probes for a run about to start, said as they go; the GPU's total and
    per-probe NVML peaks come from the run's ``sampler`` (``None``: no GPU seen)."""
    from . import _display
    from ._fit import find_batch_arg
    from ._monitor import Sampler

    arg = find_batch_arg(args)
    assert arg is not None  # RunSpec.build checked
    gpu = sampler is not None and sampler.gpu_count > 0
    total = None
    if gpu:
        try:
            total = sampler.source.read(0).total
        except Exception:
            total = None
    _display.note(
        f"colabkit: find_batch: probing from {arg.spelled()} at doubling sizes, {PROBE_STEPS} optimizer steps each "
        "in a fresh process"
    )
    search = find_batch(
        spec.script,
        args,
        arg,
        cwd=cwd,
        out_dir=run_dir / "find_batch",
        python=spec.python,
        env={k: v for k, v in env.items() if not k.startswith("COLABKIT_CHILD_")},
        total_bytes=total,
        sampler=(lambda: Sampler(interval=0.2)) if gpu else None,
        report=lambda p: _display.note(f"colabkit: find_batch: {arg.flag} {p.describe()}"),
    )
    _display.note(f"colabkit: {search.describe()}")
    return search


def find_batch(
    script: str,
    args: Sequence[object],
    arg: BatchArg,
    *,
    cwd: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    total_bytes: int | None = None,
    probe_steps: int = PROBE_STEPS,
    probe_timeout: float = PROBE_TIMEOUT_S,
    max_probes: int = MAX_PROBES,
    sampler: Callable[[], Any] | None = None,
    report: Callable[[Probe], None] | None = None,
    bootstrap: str = "colabkit._child",
) -> BatchSearch:
    """Measure the largest batch that fits with probe runs (see the module docstring).

    Args:
        script: the script, as the child gets it (relative to ``cwd`` or absolute).
        args: its arguments, holding the batch size at ``arg``.
        arg: where the batch size is (``_fit.find_batch_arg``).
        cwd: the probes' working folder.
        out_dir: where each probe's ``probe-<batch>.log`` and ``steps-<batch>.csv`` go.
        python: the interpreter (default: this one).
        env: the probes' environment (default: this process's).
        total_bytes: the GPU's memory, for the margin; ``None`` when unknown.
        probe_steps: optimizer steps each probe runs.
        probe_timeout: seconds a probe may take before it is ended (and, without an OOM, counted as fitting).
        max_probes: the most probes to run.
        sampler: makes a fresh ``_monitor.Sampler`` per probe (NVML peaks); ``None`` for none.
        report: called with each probe as it ends (the live note).
        bootstrap: the module the probes run under (``colabkit._child``).

    Returns:
        The ``BatchSearch``; ``largest`` is ``None`` when not even a batch of 1 fit or a probe failed otherwise.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = [str(a) for a in args]
    run_env = dict(os.environ if env is None else env)
    done: dict[int, Probe] = {}
    error = None

    def probe(b: int) -> Probe:
        p = _probe(
            b, arg=arg, script=script, args=tokens, python=python or sys.executable, cwd=Path(cwd), env=run_env,
            out_dir=folder, probe_steps=probe_steps, timeout=probe_timeout, bootstrap=bootstrap, sampler=sampler,
        )  # fmt: skip
        done[b] = p
        if report is not None:
            report(p)
        return p

    b0 = arg.value
    first = probe(b0)
    if first.fits is None:
        error = f"the probe at {arg.spelled(b0)} failed: {first.error}"
    elif first.fits:
        b = b0
        while len(done) < max_probes and b * 2 <= b0 * MAX_FACTOR:
            b *= 2
            p = probe(b)
            if p.fits is None:
                error = f"the probe at {arg.spelled(b)} failed: {p.error}"
                break
            if not p.fits:
                break
    else:
        b = b0
        while b > 1 and len(done) < max_probes:
            b //= 2
            p = probe(b)
            if p.fits is None:
                error = f"the probe at {arg.spelled(b)} failed: {p.error}"
                break
            if p.fits:
                break
    for _ in range(BISECTIONS):
        fit = [b for b, p in done.items() if p.fits]
        fail = [b for b, p in done.items() if p.fits is False]
        if error is not None or not fit or not fail or len(done) >= max_probes:
            break
        lo = max(fit)
        above = [b for b in fail if b > lo]
        if not above or min(above) - lo <= max(1, lo // 8):
            break
        hi = min(above)
        mid = (lo + hi) // 2
        if probe(mid).fits is None:
            error = f"the probe at {arg.spelled(mid)} failed: {done[mid].error}"
    fit = sorted(b for b, p in done.items() if p.fits)
    largest = fit[-1] if fit else None
    recommended = largest
    if total_bytes and fit:
        room = total_bytes * (1 - MARGIN)
        within = [b for b in fit if done[b].peak is None or done[b].peak <= room]
        recommended = within[-1] if within else None
    probes = tuple(done[b] for b in sorted(done))
    return BatchSearch(arg, probes, largest, recommended, total_bytes, error)
