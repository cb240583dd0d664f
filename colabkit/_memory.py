"""The memory monitor's side in the process that runs ``run()``: what the child is asked to record, what is read
back while it runs (creep, the early-save signal, the timeline), and what is said when it ends.

``run()`` makes one :class:`MemoryWatch` per run. It adds ``$COLABKIT_CHILD_*`` to the child's environment
(``steps.csv`` and the OOM record in the run folder, allocation history when asked); the run's loop calls
:meth:`MemoryWatch.poll` on the caller's thread, which reads the rows the child appended and warns once about
creep; at the end :meth:`MemoryWatch.finish` gives the :class:`MemoryReport`: the step summary, the headroom,
the batch estimate (or what ``find_batch`` measured), the OOM autopsy, and ``memory.svg``.
This process never imports torch: everything arrives through the run folder.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _autopsy, _display, _files, _fit, _steps, _timeline
from ._memhook import HISTORY_ENV, OOM_ENV, STEPS_ENV
from ._plot import Marker

__all__ = [
    "CHART_S",
    "SVG_FILE",
    "MemoryReport",
    "MemoryWatch",
    "autopsy_time",
    "checkpoint_markers",
    "describe_history",
    "for_run",
    "history_wanted",
    "report",
]

SVG_FILE = "memory.svg"
CHART_S = 5.0  # the chart in the cell is redrawn at most this often
SVG_SAVE_S = 60.0  # memory.svg is rewritten this often during the run (a disconnect keeps the last one)
SPARK_WIDTH = 12  # samples in the terminal's sparkline
SAVE_AHEAD_S = 60.0  # creep: the early-save signal goes out when the GPU is due to be full within this (or 2x grace)


@dataclass(frozen=True)
class MemoryReport:
    """What the memory monitor found over a run (each part ``None`` when it could not be known)."""

    steps: _steps.StepStats | None = None
    headroom: str | None = None
    estimate: _fit.BatchEstimate | None = None
    search: Any = None  # _findbatch.BatchSearch, when run(find_batch=True) measured
    creep: _steps.Creep | None = None
    autopsy: _autopsy.Autopsy | None = None
    svg: Path | None = None
    history: bool = False
    notes: tuple[str, ...] = field(default=())

    def lines(self) -> list[str]:
        """The lines ``RunResult.summary()`` shows."""
        out = []
        if self.steps is not None:
            out.append(f"steps: {self.steps.describe()}")
        if self.headroom is not None:
            out.append(f"headroom: {self.headroom}")
        if self.search is not None:
            out.append(f"batch: {self.search.describe()}")
        elif self.estimate is not None:
            out.append(f"batch: {self.estimate.describe()}")
        if self.creep is not None:
            out.append(f"creep: {self.creep.message()}")
        out.extend(self.notes)
        return out

    def to_json(self) -> dict[str, object]:
        """The fields ``summary.json`` records."""
        data: dict[str, object] = {"memory_history": self.history}
        for part in (self.steps, self.estimate, self.search, self.creep, self.autopsy):
            if part is not None:
                data.update(part.to_json())
        if self.svg is not None:
            data["timeline"] = self.svg.name
        return data


class MemoryWatch:
    """One run's memory monitor, parent side (see the module docstring).

    Args:
        run_dir: the run folder (``steps.csv``, ``oom.json``, ``memory.svg`` go there).
        args: the script's arguments (for the batch size).
        history: record allocation history in the child (``run(memory_history=True)``).
        grace: seconds between the early-save SIGTERM and SIGKILL (the run's budget grace).
        contract: the script follows the checkpoint contract (``resume=True`` or a ``budget``): it may get
            the early-save signal when creep is about to fill the GPU.
    """

    def __init__(
        self,
        run_dir: Path,
        args: Sequence[str] = (),
        *,
        history: bool = False,
        grace: float = 60.0,
        contract: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.args = tuple(str(a) for a in args)
        self.history = history
        self.grace = grace
        self.contract = contract
        self.reader = _steps.StepsReader(self.run_dir / _steps.FILE)
        self.creep: _steps.Creep | None = None
        self.creep_at: float | None = None  # seconds after the start on the sampler's clock
        self.save_sent = False
        self.markers: list[Marker] = []
        self.search: Any = None
        self._chart_at = -1e18
        self._svg_at = 0.0
        self._checked_rows = 0
        self._recent: collections.deque[Any] = collections.deque(maxlen=SPARK_WIDTH)
        self.last_svg = ""  # the chart as last drawn
        self.gpu_rows = False  # steps.csv has GPU memory (the script used CUDA through torch)

    def child_env(self) -> dict[str, str]:
        """What the child bootstrap reads to record steps, OOMs and (when asked) allocation history."""
        env = {STEPS_ENV: str(self.run_dir / _steps.FILE), OOM_ENV: str(self.run_dir)}
        if self.history:
            env[HISTORY_ENV] = "1"
        return env

    # -- while it runs ---------------------------------------------------------------------------------------
    def poll(self, elapsed: float, total_bytes: int | None) -> list[str]:
        """Read the rows the child appended; the notes to show now (creep, once). Cheap when nothing is new."""
        new = self.reader.poll()
        notes: list[str] = []
        rows = self.reader.rows
        if not self.gpu_rows and any(r.peak_allocated is not None for r in new):
            self.gpu_rows = True
        if new and self.creep is None and len(rows) - self._checked_rows >= 8:
            self._checked_rows = len(rows)
            creep = _steps.detect_creep(rows, total_bytes)
            if creep is not None:
                self.creep, self.creep_at = creep, elapsed
                self.markers.append(Marker(elapsed, "memory creep", "creep"))
                notes.append(f"colabkit: {creep.message()}")
        return notes

    def save_now(self) -> bool:
        """Whether to send the early-save signal now: creep will fill the GPU soon and the script can save."""
        c = self.creep
        if self.save_sent or not self.contract or c is None or c.seconds_left is None:
            return False
        if c.seconds_left <= max(SAVE_AHEAD_S, 2 * self.grace):
            self.save_sent = True
            return True
        return False

    def chart_due(self, elapsed: float, *, gpu: bool = False) -> bool:
        """Whether to redraw the chart in the cell now: every ``CHART_S``, once there is GPU memory to draw
        (``gpu``: the sampler sees a GPU; or the steps carry torch's numbers)."""
        if not (gpu or self.gpu_rows) or elapsed - self._chart_at < CHART_S:
            return False
        self._chart_at = elapsed
        return True

    def svg(self, samples: Sequence[Any], title: str, t0_mono: float | None) -> str:
        """The timeline as SVG, now."""
        chart = _timeline.layout(samples, self.reader.rows, title=title, t0_mono=t0_mono, markers=self.markers)
        self.last_svg = _timeline.svg(chart)
        return self.last_svg

    def svg_due(self, elapsed: float) -> bool:
        """Whether ``memory.svg`` is due to be rewritten (every ``SVG_SAVE_S``: a disconnect keeps the last one)."""
        return elapsed - self._svg_at >= SVG_SAVE_S

    def write_svg(self, text: str, elapsed: float) -> Path | None:
        """Write ``memory.svg``; ``None`` when the run folder cannot take it (the run goes on)."""
        self._svg_at = elapsed
        path = self.run_dir / SVG_FILE
        try:
            _files.write_text(path, text)
        except OSError:
            return None
        return path

    def note_sample(self, sample: Any) -> None:
        """Keep ``sample`` for the sparkline (the same sample twice counts once)."""
        if sample is not None and (not self._recent or self._recent[-1] is not sample):
            self._recent.append(sample)

    def sparkline(self) -> str:
        """Device memory over the last samples, scaled to the GPU's total (the terminal's status line)."""
        used = [s.used[0] if s.used else None for s in self._recent]
        total = next((s.total[0] for s in reversed(self._recent) if s.total and s.total[0]), None)
        return _timeline.sparkline(used, total, SPARK_WIDTH)

    # -- at the end ---------------------------------------------------------------------------------------------
    def finish(
        self,
        *,
        samples: Sequence[Any] = (),
        title: str = "",
        t0_mono: float | None = None,
        peak_bytes: int | None = None,
        total_bytes: int | None = None,
        oom: bool = False,
    ) -> MemoryReport:
        """Read the last rows, the OOM record when the run ran out of memory, and write ``memory.svg``.

        ``peak_bytes``/``total_bytes`` are the GPU memory the run held at most and the GPU's total (NVML).
        """
        self.reader.poll()
        rows = self.reader.rows
        steps = _steps.summarize(rows)
        arg = _fit.find_batch_arg(self.args)
        autopsy = _autopsy.load(self.run_dir, rows=rows, batch=arg) if oom else None
        total = total_bytes or (autopsy.total if autopsy is not None else None)
        creep = _steps.detect_creep(rows, total) if rows else None  # over every row, now the GPU's size is known
        if creep is None:
            creep = self.creep
        torch_peak = steps.peak_max if steps is not None else None
        peak = peak_bytes if peak_bytes is not None else (steps.reserved_max if steps is not None else None)
        estimate = None
        if not oom and self.search is None:
            slack = 0
            outside = 0
            if steps is not None and steps.reserved_max is not None and torch_peak is not None:
                slack = max(0, steps.reserved_max - torch_peak)
                if peak_bytes is not None:
                    outside = max(0, peak_bytes - steps.reserved_max)
            estimate = _fit.estimate_batch(
                arg,
                peak_bytes=torch_peak if torch_peak is not None else peak_bytes,
                total_bytes=total,
                fixed_bytes=steps.floor_last if steps is not None and torch_peak is not None else None,
                outside_bytes=outside,
                slack_bytes=slack,
            )
        if autopsy is not None:
            t = autopsy_time(self.run_dir, rows, t0_mono)
            if t is not None:
                self.markers.append(Marker(t, "out of memory", "oom"))
        svg = None
        if samples or rows:
            svg = self.write_svg(self.svg(samples, title, t0_mono), 0.0)
        return MemoryReport(
            steps=steps,
            headroom=_fit.headroom(peak, total),
            estimate=estimate,
            search=self.search,
            creep=creep,
            autopsy=autopsy,
            svg=svg,
            history=self.history,
        )


def for_run(spec: Any, plan: Any, root: Path, stem: str, run_dir: Path, args: Sequence[str]) -> MemoryWatch:
    """The watch for one ``run()``: allocation history as asked (``None``: on after an OOM without it, said once),
    the early-save signal's grace and whether the script follows the checkpoint contract."""
    history = spec.memory_history
    if history is None:
        history = history_wanted(root, stem, before=run_dir)
        if history:
            _display.note(
                f"colabkit: the last run of {spec.script} ran out of GPU memory: allocation history is on for this "
                f"run ({'--memory-history' if spec.surface == 'cli' else 'memory_history=True'}), so an "
                "out-of-memory error names the lines that hold the memory"
            )
    return MemoryWatch(
        run_dir,
        args,
        history=history,
        grace=plan.grace if plan is not None else SAVE_AHEAD_S,
        contract=bool(spec.resume or plan is not None),
    )


def report(
    memory: MemoryWatch | None,
    sampler: Any,
    stats: Any,
    samples: Sequence[Any],
    *,
    script: str,
    status: str,
    oom: bool,
    chart: Any = None,
    checkpoint_dir: Path | None = None,
    started_wall: float = 0.0,
) -> MemoryReport | None:
    """What the memory monitor found at the end of a run; ``memory.svg`` drawn and, in a notebook, the cell's
    chart in its last state. Never raises: a failure is noted and the run's result stands without it."""
    if memory is None:
        return None
    try:
        t0 = sampler.started_at if sampler is not None else None
        if t0 is not None and checkpoint_dir is not None:  # checkpoints: file times moved onto the sampler's clock
            t0_wall = time.time() - (time.monotonic() - t0)
            memory.markers.extend(checkpoint_markers(checkpoint_dir, started_wall, t0_wall))
        found = memory.finish(
            samples=samples,
            title=f"{script}: {status}",
            t0_mono=t0,
            peak_bytes=(stats.child_peak_gpu_bytes or stats.peak_used_bytes) if stats is not None else None,
            total_bytes=stats.total_bytes if stats is not None else None,
            oom=oom,
        )
        gpu = any(s.used for s in samples) or memory.gpu_rows
        if chart is not None and memory.last_svg and gpu:  # nothing to draw: no chart in the cell
            chart.update(memory.last_svg)
        return found
    except Exception as exc:
        _display.note(f"colabkit: the memory report failed: {exc!r}")
        return None


def history_wanted(root: Path, stem: str, *, before: Path | None = None) -> bool:
    """Whether the last run of the script ``stem`` under ``root`` ran out of memory without allocation history:
    then ``memory_history=None`` (auto) turns it on for this run, so the re-run's autopsy names the lines.

    Run folders are ``<YYYYmmdd-HHMMSS>-<stem>[-N]``; ``before`` (this run's own folder) is skipped.
    """
    try:
        names = sorted(
            (p for p in root.iterdir() if p.is_dir() and p != before and _same_script(p.name, stem)),
            key=lambda p: p.name,
        )
    except OSError:
        return False
    for folder in reversed(names):
        data = _files.read_json(folder / "summary.json")
        if data is None or data.get("status") == "running":
            continue
        memory = data.get("memory") if isinstance(data.get("memory"), dict) else {}
        return bool(memory.get("oom_fix")) and not memory.get("memory_history")
    return False


def _same_script(name: str, stem: str) -> bool:
    rest = name[16:] if len(name) > 16 and name[8] == "-" and name[15] == "-" else ""
    return rest == stem or (rest.startswith(stem + "-") and rest[len(stem) + 1 :].isdigit())


def autopsy_time(run_dir: Path, rows: Sequence[_steps.Step], t0_mono: float | None) -> float | None:
    """When the last OOM happened, on the sampler's clock (from the child's ``t_s`` and a row's two clocks)."""
    report = _files.read_json(run_dir / _autopsy.OOM_FILE)
    if not report or not report.get("events"):
        return None
    t_s = report["events"][-1].get("t_s")
    if not isinstance(t_s, (int, float)):
        return None
    if t0_mono is None or not rows:
        return float(t_s)
    child_t0 = rows[0].mono_s - rows[0].t_s  # the child's start on the shared monotonic clock
    return child_t0 + float(t_s) - t0_mono


def describe_history(on: bool) -> str:
    """How the OOM message says what allocation history did (a sentence)."""
    if on:
        return "Allocation history was on: the lines above allocated what was live."
    return (
        "Allocation history was off (it costs time on every allocation): the next run of this script records it "
        "(or pass memory_history=True), so its autopsy names the lines of your script that hold the memory."
    )


def checkpoint_markers(checkpoint_dir: Path, started_wall: float, t0_wall: float) -> list[Marker]:
    """Checkpoints written since ``started_wall`` (wall clock), placed at ``mtime - t0_wall`` seconds."""
    out = []
    try:
        entries = list(os.scandir(checkpoint_dir))
    except OSError:
        return []
    for e in entries:
        if not e.name.startswith("ckpt-") and not e.name.endswith((".pt", ".pkl", ".ckpt", ".safetensors")):
            continue
        try:
            mtime = e.stat().st_mtime
        except OSError:
            continue
        if mtime >= started_wall:
            out.append(Marker(mtime - t0_wall, "checkpoint", "checkpoint"))
    return sorted(out, key=lambda m: m.t)
