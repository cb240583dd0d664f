"""``RunResult``: what a run did, how it ended, and the error that says so when it did not finish."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _display, _format, _notebook, _oom, _plot, _runtime
from ._memory import MemoryReport, describe_history
from ._notebook import ShownOnce
from ._stats import Sample, Stats
from .errors import CudaOutOfMemory, RunFailed

__all__ = ["STDERR_TAIL", "RunResult", "describe_returncode", "show_summary"]

STDERR_TAIL = 20  # lines of the child's output an error carries


@dataclass(frozen=True)
class RunResult(ShownOnce):
    """What a run did: exit status, time, where its files are, and what the GPU monitor saw.

    ``status`` is ``"finished"`` (the script got to its end and exited 0), ``"failed"``, ``"interrupted"``
    (Stop, KeyboardInterrupt or ``timeout``, whatever the script then did) or ``"stopped"`` (the ``budget``
    ran out: the script got SIGTERM; one that saved and exited 0 in its grace is stopped too, with
    ``returncode=0``: resume it to go on). ``framework_peak_bytes`` is the
    child's own ``torch.cuda.max_memory_allocated()`` on its busiest GPU (``None`` without torch/CUDA).
    ``attribution`` says how ``stats.child_peak_gpu_bytes`` was found: ``"pid"``, ``"new-pids"`` or ``"baseline"``.
    ``args`` are the script's arguments as recorded, with secret-looking values (``--api-key``,
    ``--token=``) shown as ``***``; the script itself got the real ones. ``stderr_tail`` holds the last
    lines of the child's output (stdout and stderr share one pipe, so they stay in order), as does
    ``RunFailed.stderr_tail``. When ``output.log`` could not be written (a full disk, a Drive that died, a
    deleted run folder), ``log_problem`` says why and ``unsaved_output`` holds the bytes that are not in
    it, from the first failure on (up to 64 MiB; ``unsaved_dropped_bytes`` counts any beyond), and
    ``unsaved_path`` the file on the VM's own disk (``$COLABKIT_CACHE/unsaved/``) they were written to.

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
    unsaved_output: bytes = field(default=b"", repr=False)  # output that is not in output.log (see log_problem)
    unsaved_path: Path | None = None  # the same bytes in a file on another disk, when one could be written
    unsaved_dropped_bytes: int = 0  # output neither in output.log nor kept: more than fitted in memory
    log_problem: str | None = None  # why output.log lacks some of the output, while it does
    memory: MemoryReport | None = field(default=None, repr=False)  # steps, headroom, batch, creep, OOM autopsy
    batch_search: Any = field(default=None, repr=False)  # what run(find_batch=True) measured (BatchSearch)
    # a torchrun run (gpus=, nproc=): how many ranks on what, which failed first, each rank's peaks
    ranks: dict[str, Any] | None = field(default=None, repr=False)
    rank_tail: tuple[str, ...] = field(default=(), repr=False)  # the failed rank's own last lines
    limit_label: str | None = None  # the machine's limit that ended the budget, e.g. "the Kaggle session's ~12 h limit"

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
        if self.reason == "creep":
            return _stopped_for_creep(self, tail, facts, duration)
        if self.status == "stopped" and self.returncode == 0:
            return _saved_at_budget(self, tail, facts, duration)
        failed = (self.ranks or {}).get("failed")
        if self.status == "failed" and failed is not None and self.oom is None:
            code = failed.get("exitcode")
            return RunFailed.rank_failed(
                self.script,
                rank=failed["rank"],
                world=self.ranks["nproc"],
                ending=describe_returncode(code if isinstance(code, int) else None),
                tail="\n".join(self.rank_tail[-STDERR_TAIL:]),
                log_path=self.log_path,
                **facts,
            )
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
                limit_label=self.limit_label,
                **facts,
            )
        if self.oom is not None:
            autopsy = self.memory.autopsy if self.memory is not None else None
            peak, total = self.peak_gpu_bytes, self.gpu_total_bytes
            if autopsy is not None and peak is None:  # no NVML numbers: the allocator's own at the failure
                peak, total = autopsy.reserved, autopsy.total
            message = _oom.message(self.oom, self.script, peak, total, self.oom_tried_bytes)
            hint = "To fit in memory: " + _oom.advice(self.oom)
            if autopsy is not None:  # what held the memory, and the one change that fits the numbers
                message += "\n" + autopsy.describe()
                hint = f"{autopsy.fix()[1]} {describe_history(autopsy.history)}"
                if autopsy.snapshot_path is not None:
                    hint += f" The memory snapshot for pytorch.org/memory_viz: {autopsy.snapshot_path}"
            return CudaOutOfMemory(
                message + (f"\n{tail}" if tail else ""),
                hint,
                cli_message=message,
                on_screen=f"\n{tail}" if tail else "",
                peak_bytes=self.peak_gpu_bytes,
                total_bytes=self.gpu_total_bytes,
                stderr_tail=tail,
                log_path=self.log_path,
                **facts,
            )
        return RunFailed.exited(
            self.script, describe_returncode(self.returncode), tail=tail, log_path=self.log_path, **facts
        )

    def unsaved_text(self) -> str:
        """What ``output.log`` lacks and where it is (empty when the log is complete)."""
        if self.log_problem is None:
            return ""
        kept = self.unsaved_output
        lines = kept.count(b"\n") + (1 if kept and not kept.endswith(b"\n") else 0)
        text = (
            f"{self.log_path} lacks {_format.format_bytes(len(kept))} of output ({lines} lines) that could not be "
            f"written ({self.log_problem}): "
            + (f"they are in {self.unsaved_path}" if self.unsaved_path is not None else "they are in RunResult.unsaved_output")
        )
        if self.unsaved_dropped_bytes:
            text += f"; {_format.format_bytes(self.unsaved_dropped_bytes)} more did not fit in memory and are lost"
        return text

    def summary(self) -> str:
        """A few lines: status, duration, GPU peak and headroom, attribution, framework peak, files."""
        fb = _format.format_bytes
        lines = [
            f"{self.script} {self.status} ({describe_returncode(self.returncode)}) in {_format.format_duration(self.duration_s)}"
        ]
        if self.stats is not None and self.stats.describe(duration=False, no_gpu=False):
            # the first line has the duration; "no GPU" was said once before the run
            lines.append(self.stats.describe(duration=False, no_gpu=False))
        if self.resumed_from is not None:
            lines.append(f"resumed from {self.resumed_from}")
        if self.ranks is not None:
            lines.append(_ranks_line(self.ranks))
        if self.reason == "budget":
            lines.append(f"budget {_format.format_span(self.budget)}: SIGTERM sent {_format.format_span(self.grace)} before the end")
        if self.framework_peak_bytes is not None:
            lines.append(
                f"torch peak: {fb(self.framework_peak_bytes)} allocated, {fb(self.framework_reserved_bytes)} reserved"
            )
        if self.memory is not None:
            lines.extend(self.memory.lines())
        elif self.batch_search is not None:
            lines.append(f"batch: {self.batch_search.describe()}")
        lines.append(f"log: {self.log_path}" if self.log_problem is None else f"log: {self.unsaved_text()}")
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

    def _bundle(self) -> dict[str, str]:
        return {"text/plain": self.summary(), "text/html": self._repr_html_()}

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
        out = _plot.PlotFile(path if path is not None else self.log_dir / "gpu.png")
        _plot.draw(self.samples, out, f"{self.script}: {self.status}")
        if _runtime.display_mode() == "notebook":
            _notebook.show_once(out, out._bundle())  # as the cell's last line it is not shown again, nor its path
        return out


def _saved_at_budget(result: RunResult, tail: str, facts: dict[str, Any], duration: str) -> RunFailed:
    limited = result.stop_at is not None and result.budget is not None and result.stop_at < result.budget
    return RunFailed.saved_at_budget(
        result.script,
        duration,
        budget=result.budget,
        log_path=result.log_path,
        tail=tail,
        limit_label=(result.limit_label or "the Colab VM's ~12 h limit") if limited else None,
        **facts,
    )


def _stopped_for_creep(result: RunResult, tail: str, facts: dict[str, Any], duration: str) -> RunFailed:
    creep = result.memory.creep if result.memory is not None else None
    ending = "it exited 0 on SIGTERM" if result.returncode == 0 else f"it ended with {describe_returncode(result.returncode)}"
    return RunFailed.stopped_for_creep(
        result.script,
        duration,
        saved=ending,
        grew=creep.message() if creep is not None else "memory kept growing",
        log_path=result.log_path,
        tail=tail,
        **facts,
    )


def show_summary(result: RunResult, *, error_follows: bool) -> None:
    """The run's summary, shown once: in a notebook as the cell's result would show it (so that ``run()`` as
    the last line shows nothing more); before the error of a failed run without what the error says."""
    if error_follows:
        lines = result.summary().split("\n")[1:]  # the error says how the run ended
        if lines and lines[-1] == f"log: {result.log_path}" and str(result.log_path) in result.error().render():
            lines.pop()  # and where its output is
        if lines:
            _display.note("\n".join(lines))
    elif _runtime.display_mode() == "notebook":
        _notebook.show_once(result, result._bundle())
    else:
        _display.note(result.summary())


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


def _ranks_line(ranks: dict[str, Any]) -> str:
    """``ranks: 2 (gloo); peaks rank 0 410.2 MiB, rank 1 398.0 MiB; rank 1 failed first (exit status 3)``."""
    fb = _format.format_bytes
    text = f"ranks: {ranks.get('nproc')} ({ranks.get('backend')})"
    peaks = []
    for row in ranks.get("peaks") or ():
        held = row.get("peak_gpu_bytes") or row.get("framework_peak_bytes")
        part = f"rank {row.get('rank')} {fb(row.get('peak_memory_bytes'))} RAM"
        peaks.append(part + (f", {fb(held)} GPU" if held is not None else ""))
    if peaks:
        text += "; peaks " + "; ".join(peaks)
    failed = ranks.get("failed")
    if failed:
        text += f"; rank {failed.get('rank')} failed first ({describe_returncode(failed.get('exitcode'))})"
    return text
