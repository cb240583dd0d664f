"""``steps.csv`` read by the parent: the child's per-step memory rows, their summary, and memory creep with an ETA.

The child (``_memhook``) appends one row per optimizer step (later rows cover 2, 4, ... steps: ``n``), with
allocated and reserved bytes right after the step, the peaks since the row before, and the floor (the
least allocated right after a step). :class:`StepsReader` follows the file as it grows, complete lines
only. :func:`summarize` gives ``summary.json``'s step fields; :func:`detect_creep` tells a floor that
keeps rising (a tensor kept across steps) from warm-up and noise, and says when the GPU would be full.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from . import _format

__all__ = ["FILE", "Creep", "Step", "StepStats", "StepsReader", "detect_creep", "read_steps", "summarize"]

FILE = "steps.csv"
_MAX_READ = 4 * 1024**2  # bytes read per poll: a flood of rows is taken in turns
MIN_CREEP_STEPS = 40  # steps the floor must have been watched over before creep is called
CREEP_CHUNKS = 8  # the watched steps are cut in this many stretches; each stretch's lowest floor must rise
MIN_CREEP_BYTES = 32 * 1024**2  # total growth below this is noise, whatever its shape
WARMUP_STEPS = 3  # optimizer state and caches are allocated in the first steps: never creep


def _int(text: str) -> int | None:
    return int(text) if text and text.lstrip("-").isdigit() else None


@dataclass(frozen=True)
class Step:
    """One row of ``steps.csv``: ``n`` steps ending at ``step``; bytes are ``None`` when CUDA was not in use."""

    step: int
    t_s: float  # seconds since the script started
    mono_s: float  # time.monotonic() in the child (the same clock as the parent's on one machine)
    n: int
    device: int | None
    allocated: int | None
    reserved: int | None
    peak_allocated: int | None
    peak_reserved: int | None
    min_allocated: int | None

    @classmethod
    def parse(cls, line: str) -> Step | None:
        parts = line.rstrip("\n").split(",")
        if len(parts) != 10 or not parts[0].isdigit():
            return None
        try:
            t, mono = float(parts[1]), float(parts[2])
        except ValueError:
            return None
        values = [_int(p) for p in parts[3:]]
        return cls(int(parts[0]), t, mono, values[0] or 1, *values[1:])


class StepsReader:
    """Follows a ``steps.csv`` the child is still writing; :attr:`rows` holds every complete row read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rows: list[Step] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[Step]:
        """The rows written since the last call (none while the file does not exist)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read(_MAX_READ)
        except OSError:
            return []
        if not data:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # the child may be mid-line
        new = [s for s in (Step.parse(line.decode("utf-8", "replace")) for line in lines) if s is not None]
        self.rows.extend(new)
        return new


def read_steps(path: str | os.PathLike[str]) -> list[Step]:
    """Every complete row of a ``steps.csv`` (``[]`` when there is none)."""
    reader = StepsReader(path)
    while reader.poll():
        pass
    return reader.rows


@dataclass(frozen=True)
class StepStats:
    """What the optimizer steps showed: how many, how fast, and the peak allocated per step (bytes)."""

    steps: int
    duration_s: float | None  # from the first row to the last
    steps_per_s: float | None
    peak_p50: int | None  # median over the steps of the peak allocated between two steps
    peak_max: int | None
    reserved_max: int | None
    floor_first: int | None  # allocated right after the first step: weights, gradients, optimizer state
    floor_last: int | None

    def to_json(self) -> dict[str, object]:
        """The fields ``summary.json`` records."""
        return {
            "steps": self.steps,
            "steps_per_s": None if self.steps_per_s is None else round(self.steps_per_s, 3),
            "step_peak_p50_bytes": self.peak_p50,
            "step_peak_max_bytes": self.peak_max,
            "step_reserved_max_bytes": self.reserved_max,
            "step_floor_bytes": self.floor_last,
        }

    def describe(self) -> str:
        fb = _format.format_bytes
        rate = ""
        if self.steps_per_s is not None:
            rate = f" ({self.steps_per_s:,.0f}/s)" if self.steps_per_s >= 100 else f" ({self.steps_per_s:.3g}/s)"
        text = f"{self.steps:,} optimizer steps{rate}"
        if self.peak_max is not None:
            text += f", peak per step {fb(self.peak_p50)} median, {fb(self.peak_max)} max, floor {fb(self.floor_last)}"
        return text


def summarize(rows: list[Step]) -> StepStats | None:
    """The step fields of a run's summary, or ``None`` when no step was recorded.

    The median is exact while each row is one step; a row covering ``n`` steps counts ``n`` times with
    its largest peak (so the median leans high once rows cover several steps).
    """
    if not rows:
        return None
    steps = rows[-1].step
    duration = rows[-1].mono_s - rows[0].mono_s if len(rows) > 1 else None
    covered = steps - rows[0].step
    rate = covered / duration if duration and covered > 0 else None
    peaks = sorted((r.peak_allocated, r.n) for r in rows if r.peak_allocated is not None)
    p50 = None
    if peaks:
        half = sum(n for _, n in peaks) / 2
        seen = 0
        for value, n in peaks:
            seen += n
            if seen >= half:
                p50 = value
                break
    floors = [r.min_allocated for r in rows if r.min_allocated is not None]
    reserved = [r.peak_reserved for r in rows if r.peak_reserved is not None]
    return StepStats(
        steps=steps,
        duration_s=duration,
        steps_per_s=rate,
        peak_p50=p50,
        peak_max=peaks[-1][0] if peaks else None,
        reserved_max=max(reserved) if reserved else None,
        floor_first=floors[0] if floors else None,
        floor_last=floors[-1] if floors else None,
    )


@dataclass(frozen=True)
class Creep:
    """Memory that outlives each step and keeps growing: the rate, and when the GPU would be full at that rate."""

    at_step: int
    rate_per_step: float  # bytes
    rate_per_s: float | None  # bytes
    floor_bytes: int  # the floor now
    steps_left: int | None  # until the peak reaches the GPU's total
    seconds_left: float | None

    CAUSE = (
        "the usual cause is a tensor kept across steps, e.g. in a Python list: `losses.append(loss)` keeps "
        "every step's graph alive; append `loss.item()` (or `loss.detach()`) instead"
    )

    def message(self) -> str:
        """``memory grows ≈40.0 MiB/step; at this rate the GPU is full in ≈1,200 steps (~18m00s)``, then the cause."""
        text = f"memory grows ≈{_format.format_bytes(self.rate_per_step)}/step"
        if self.steps_left is not None:
            text += f"; at this rate the GPU is full in ≈{self.steps_left:,} steps"
            if self.seconds_left is not None:
                text += f" (~{_format.format_duration(round(self.seconds_left))})"
        return f"{text}. {self.CAUSE[0].upper()}{self.CAUSE[1:]}."

    def to_json(self) -> dict[str, object]:
        return {
            "creep_at_step": self.at_step,
            "creep_bytes_per_step": round(self.rate_per_step),
            "creep_steps_left": self.steps_left,
            "creep_seconds_left": None if self.seconds_left is None else round(self.seconds_left, 1),
        }


def detect_creep(rows: list[Step], total_bytes: int | None, *, window: int = 400) -> Creep | None:
    """Steady growth of the per-step floor over the recent rows, or ``None``.

    The last ``window`` rows past warm-up are cut in ``CREEP_CHUNKS`` stretches of steps; the floor creeps
    when the lowest floor of every stretch is at least the one before, strictly higher in all but one, and
    it grew by ``MIN_CREEP_BYTES`` or more (and by 0.5 % of ``total_bytes``) in all. A one-time jump (Adam's
    state after the first step, a bigger evaluation batch) or a floor that goes back down is not creep.
    """
    seen = [r for r in rows if r.min_allocated is not None and r.step > WARMUP_STEPS][-window:]
    if len(seen) < CREEP_CHUNKS or seen[-1].step - seen[0].step + seen[0].n < MIN_CREEP_STEPS:
        return None
    first, last = seen[0].step - seen[0].n, seen[-1].step
    span = (last - first) / CREEP_CHUNKS
    chunks: list[list[Step]] = [[] for _ in range(CREEP_CHUNKS)]
    for r in seen:
        chunks[min(CREEP_CHUNKS - 1, int((r.step - first - 1) / span))].append(r)
    if any(not c for c in chunks):
        return None
    lows = [min(c, key=lambda r: r.min_allocated or 0) for c in chunks]
    values = [r.min_allocated or 0 for r in lows]
    rises = [b - a for a, b in zip(values, values[1:], strict=False)]
    if any(d < 0 for d in rises) or sum(1 for d in rises if d > 0) < len(rises) - 1:
        return None
    growth = values[-1] - values[0]
    if growth < MIN_CREEP_BYTES or (total_bytes and growth < 0.005 * total_bytes):
        return None
    half = CREEP_CHUNKS // 2  # the rate now: over the recent half (a flat start would dilute it)
    recent = values[-1] - values[half]
    rate = recent / max(1, lows[-1].step - lows[half].step)
    seconds = lows[-1].mono_s - lows[half].mono_s
    rate_s = recent / seconds if seconds > 0 else None
    steps_left = seconds_left = None
    peak = max((r.peak_reserved or r.peak_allocated or 0) for r in seen[-max(1, len(seen) // CREEP_CHUNKS) :])
    if total_bytes:
        steps_left = max(0, math.ceil((total_bytes - peak) / rate))
        if rate_s:
            seconds_left = steps_left * rate / rate_s
    return Creep(
        at_step=last,
        rate_per_step=rate,
        rate_per_s=rate_s,
        floor_bytes=values[-1],
        steps_left=steps_left,
        seconds_left=seconds_left,
    )
