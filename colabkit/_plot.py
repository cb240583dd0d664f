"""``gpu.png``: GPU memory (and the child's) and utilisation over a run, drawn with matplotlib when it is there."""

from __future__ import annotations

from pathlib import Path

from ._stats import Sample

__all__ = ["draw"]


def _nan(value: int | float | None, scale: float) -> float:
    return float("nan") if value is None else value / scale


def draw(samples: tuple[Sample, ...], out: Path, title: str) -> None:
    """Draw GPU memory (and the child's) and utilisation over time to the PNG ``out``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5))
    mem, util = fig.subplots(2, 1, sharex=True)
    ts = [s.t for s in samples]
    gib = 1024**3
    count = max((len(s.used) for s in samples), default=0)
    for i in range(count):
        mem.plot(ts, [_nan(s.used[i], gib) for s in samples], label=f"GPU{i} used")
        util.plot(ts, [_nan(s.util[i], 1) for s in samples], label=f"GPU{i}")
        totals = [s.total[i] for s in samples if s.total[i] is not None]
        if totals:
            mem.axhline(totals[-1] / gib, linestyle="--", linewidth=0.8, color="grey")
    if any(s.child_gpu_bytes is not None for s in samples):
        mem.plot(ts, [_nan(s.child_gpu_bytes, gib) for s in samples], label="child (GPU)")
    if any(s.child_rss_bytes is not None for s in samples):
        mem.plot(ts, [_nan(s.child_rss_bytes, gib) for s in samples], label="child RAM", linestyle=":")
    mem.set_ylabel("GiB")
    mem.set_title(title)
    mem.legend(loc="upper left", fontsize="small")
    util.set_ylabel("GPU util %")
    util.set_ylim(0, 105)
    util.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
