"""``RunResult``: what a run did, how it ended, and the error that says so when it did not finish."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _display, _format, _oom, _plot
from ._stats import Sample, Stats
from .errors import CudaOutOfMemory, RunFailed

__all__ = ["STDERR_TAIL", "RunResult", "describe_returncode"]

STDERR_TAIL = 20  # lines of the child's output an error carries


@dataclass(frozen=True)
class RunResult:
    """What a run did: exit status, time, where its files are, and what the GPU monitor saw.

    ``status`` is ``"finished"``, ``"failed"``, ``"interrupted"`` (Stop, KeyboardInterrupt or ``timeout``)
    or ``"stopped"`` (the ``budget`` ran out and the script did not exit 0 in its grace period). A script
    that saves on SIGTERM and exits 0 is ``"finished"`` with ``reason="budget"``. ``framework_peak_bytes`` is the
    child's own ``torch.cuda.max_memory_allocated()`` on its busiest GPU (``None`` without torch/CUDA).
    ``attribution`` says how ``stats.child_peak_gpu_bytes`` was found: ``"pid"``, ``"new-pids"`` or ``"baseline"``.
    ``args`` are the script's arguments as recorded, with secret-looking values (``--api-key``,
    ``--token=``) shown as ``***``; the script itself got the real ones. ``stderr_tail`` holds the last
    lines of the child's output (stdout and stderr share one pipe, so they stay in order), as does
    ``RunFailed.stderr_tail``.

    Examples:
        >>> r = colabkit.run("train.py", "--epochs", "1")
        >>> r
        RunResult(status='finished', returncode=0, duration=1m12s, peak=9.8 GiB/15.0 GiB, log='runs/20260101-120000-train/output.log')
    """

    returncode: int | None
    status: str
    duration_s: float
    log_dir: Path
    log_path: Path
    samples: tuple[Sample, ...] = ()
    stats: Stats | None = None
    framework_peak_bytes: int | None = None
    attribution: str | None = None
    script: str = ""
    args: tuple[str, ...] = ()
    framework_reserved_bytes: int | None = None
    stderr_tail: tuple[str, ...] = field(default=(), repr=False)
    oom: str | None = None  # "pytorch" | "tensorflow" | "jax" when the child ran out of GPU memory
    oom_tried_bytes: int | None = None
    reason: str | None = None  # "interrupt" | "timeout" | "budget": why colabkit stopped the child
    timeout: float | None = None
    budget: float | None = None  # seconds, as asked
    grace: float | None = None  # seconds between SIGTERM and SIGKILL
    stop_at: float | None = None  # seconds after the start when SIGKILL was due (budget or the VM limit)
    resumed_from: Path | None = None  # the checkpoint handed to the script with resume=True

    @property
    def ok(self) -> bool:
        return self.status == "finished"

    @property
    def peak_gpu_bytes(self) -> int | None:
        return self.stats.peak_used_bytes if self.stats else None

    @property
    def gpu_total_bytes(self) -> int | None:
        return self.stats.total_bytes if self.stats else None

    def check(self) -> RunResult:
        """Return ``self`` if the run finished; raise what ``run(check=True)`` would have raised.

        Raises:
            CudaOutOfMemory: the child crashed out of GPU memory.
            RunFailed: the child exited non-zero, or colabkit stopped it (timeout, budget, Stop).
        """
        if self.status == "finished":
            return self
        raise self.error()

    def error(self) -> RunFailed:
        """The ``RunFailed`` (or ``CudaOutOfMemory``) that says how this run did not finish."""
        tail = "\n".join(self.stderr_tail[-STDERR_TAIL:])
        facts: dict[str, Any] = {"returncode": self.returncode, "result": self}
        duration = _format.format_duration(self.duration_s)
        if self.status in ("interrupted", "stopped"):
            return RunFailed.stopped(
                self.script,
                duration,
                by="budget" if self.status == "stopped" else (self.reason or "interrupt"),
                log_path=self.log_path,
                tail=tail,
                timeout=self.timeout,
                budget=self.budget,
                grace=self.grace,
                vm_limit=self.stop_at is not None and self.budget is not None and self.stop_at < self.budget,
                ending=describe_returncode(self.returncode),
                **facts,
            )
        if self.oom is not None:
            message = _oom.message(self.oom, self.script, self.peak_gpu_bytes, self.gpu_total_bytes, self.oom_tried_bytes)
            return CudaOutOfMemory(
                message + (f"\n{tail}" if tail else ""),
                "To fit in memory: " + _oom.advice(self.oom),
                cli_message=message,
                peak_bytes=self.peak_gpu_bytes,
                total_bytes=self.gpu_total_bytes,
                stderr_tail=tail,
                log_path=self.log_path,
                **facts,
            )
        return RunFailed.exited(
            self.script, describe_returncode(self.returncode), tail=tail, log_path=self.log_path, **facts
        )

    def summary(self) -> str:
        """A few lines: status, duration, GPU peak and headroom, attribution, framework peak, files."""
        fb = _format.format_bytes
        lines = [
            f"{self.script} {self.status} ({describe_returncode(self.returncode)}) in {_format.format_duration(self.duration_s)}"
        ]
        if self.stats is not None:
            lines.append(self.stats.describe(duration=False))  # the first line has it
        if self.resumed_from is not None:
            lines.append(f"resumed from {self.resumed_from}")
        if self.reason == "budget":
            lines.append(f"budget {_format.format_span(self.budget)}: SIGTERM sent {_format.format_span(self.grace)} before the end")
        if self.framework_peak_bytes is not None:
            lines.append(
                f"torch peak: {fb(self.framework_peak_bytes)} allocated, {fb(self.framework_reserved_bytes)} reserved"
            )
        lines.append(f"log: {self.log_path}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [f"status={self.status!r}", f"returncode={_format.na(self.returncode)}"]
        parts.append(f"duration={_format.format_duration(self.duration_s)}")
        if self.reason is not None:
            parts.append(f"reason={self.reason!r}")
        if self.stats is not None and self.stats.gpu_count:
            parts.append(
                f"peak={_format.format_bytes(self.peak_gpu_bytes)}/{_format.format_bytes(self.gpu_total_bytes)}"
            )
        if self.framework_peak_bytes is not None:
            parts.append(f"torch_peak={_format.format_bytes(self.framework_peak_bytes)}")
        parts.append(f"log={str(self.log_path)!r}")
        return f"RunResult({', '.join(parts)})"

    def _repr_html_(self) -> str:
        return _display.html_pre(self.summary())

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Draw GPU memory (and child memory) and utilisation over time to ``gpu.png`` in the run folder.

        Args:
            path: where to write the PNG (default ``<run folder>/gpu.png``).

        Returns:
            The path of the image.

        Raises:
            ImportError: matplotlib is not installed (``pip install matplotlib``).
        """
        try:
            import matplotlib.figure  # noqa: F401 - only to say how to install it
        except ImportError:
            raise ImportError(
                "RunResult.plot() needs matplotlib, which is not installed: run `pip install matplotlib` "
                "(or `pip install colabkit-gpu[plot]`)"
            ) from None
        out = Path(path) if path is not None else self.log_dir / "gpu.png"
        _plot.draw(self.samples, out, f"{self.script}: {self.status}")
        _display.show_image(out)
        return out


def describe_returncode(rc: int | None) -> str:
    """``exit status 1``, ``signal SIGKILL`` or ``no exit status``."""
    if rc is None:
        return "no exit status"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit status {rc}"
