"""``gpu.png``: memory and utilisation over a run. ``layout()`` decides what the chart says (pure data);
``draw()`` renders it with matplotlib when it is installed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._notebook import ShownOnce
from ._stats import Sample

__all__ = ["Chart", "Marker", "PlotFile", "Series", "draw", "layout", "unit_for"]

_UNITS = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024), ("B", 1))


def unit_for(largest: float | None) -> tuple[str, int]:
    """The unit that shows ``largest`` bytes as a number between 1 and 1024: ``19 MiB`` in MiB, not ``0.02 GiB``."""
    for name, size in _UNITS:
        if largest is not None and largest >= size:
            return name, size
    return "B", 1


@dataclass(frozen=True)
class Series:
    """One line of a panel: its label, the values in the panel's unit (``None`` where unknown), its style."""

    label: str
    values: tuple[float | None, ...]
    style: str = "-"
    times: tuple[float, ...] | None = None  # its own x values (seconds), when not the chart's


@dataclass(frozen=True)
class Panel:
    """One panel: its y label, its lines, horizontal reference lines (a GPU's total) and y limits."""

    ylabel: str
    series: tuple[Series, ...]
    hlines: tuple[float, ...] = ()
    ylim: tuple[float, float] | None = None


@dataclass(frozen=True)
class Marker:
    """A moment on the time axis (seconds): a checkpoint, the OOM, a creep warning; with ``end``, a stretch (a gap)."""

    t: float
    label: str
    kind: str = "event"  # "checkpoint" | "oom" | "creep" | "gap" | "event"
    end: float | None = None


@dataclass(frozen=True)
class Chart:
    """What the figure shows: the times, its panels, the title and a note (why a panel is missing)."""

    times: tuple[float, ...]
    panels: tuple[Panel, ...]
    title: str
    note: str | None = None
    gpus: int = 0
    markers: tuple[Marker, ...] = ()


def _scaled(values: list[int | None], size: int) -> tuple[float | None, ...]:
    return tuple(None if v is None else v / size for v in values)


def layout(samples: tuple[Sample, ...], title: str) -> Chart:
    """The chart for ``samples``: GPU memory (with each GPU's total), the run's RAM and GPU utilisation;
    without a GPU, the run's RAM alone, in a unit that fits it, and a note that there was no GPU."""
    times = tuple(s.t for s in samples)
    gpus = max((len(s.used) for s in samples), default=0)
    ram = [s.child_rss_bytes for s in samples]
    has_ram = any(v is not None for v in ram)
    if gpus == 0:
        unit, size = unit_for(max((v for v in ram if v is not None), default=None))
        series = (Series("RAM of the run's processes", _scaled(ram, size)),) if has_ram else ()
        note = "no GPU was visible: this run used the CPU, so only its RAM is drawn"
        return Chart(times, (Panel(f"RAM ({unit})", series),), title, note, 0)
    gib = 1024**3
    memory = [Series(f"GPU{i} used", _scaled([s.used[i] if i < len(s.used) else None for s in samples], gib))
              for i in range(gpus)]  # fmt: skip
    if any(s.child_gpu_bytes is not None for s in samples):
        memory.append(Series("the run (GPU)", _scaled([s.child_gpu_bytes for s in samples], gib)))
    if has_ram:
        memory.append(Series("the run (RAM)", _scaled(ram, gib), ":"))
    totals = []
    for i in range(gpus):
        known = [s.total[i] for s in samples if i < len(s.total) and s.total[i] is not None]
        if known:
            totals.append(known[-1] / gib)
    util = tuple(
        Series(f"GPU{i}", tuple(None if i >= len(s.util) or s.util[i] is None else float(s.util[i]) for s in samples))
        for i in range(gpus)
    )
    return Chart(
        times,
        (Panel("GiB", tuple(memory), tuple(totals)), Panel("GPU util %", util, ylim=(0, 105))),
        title,
        None,
        gpus,
    )


class PlotFile(ShownOnce, type(Path())):  # type: ignore[misc]  # PosixPath here; WindowsPath would do too
    """The path of a drawn PNG: a path everywhere, shown as the image in a notebook (not as ``PosixPath(...)``).

    As a cell's last line it shows nothing more when the call that drew it already showed the image.
    """

    def with_segments(self, *segments: str | os.PathLike[str]) -> Path:  # Python 3.12+: paths made from it are plain
        return Path(*segments)

    def _bundle(self) -> dict[str, str]:
        import base64

        try:
            png = self.read_bytes()
        except OSError:  # moved or deleted since: the path is all there is to show
            return {"text/plain": str(self)}
        return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": str(self)}


def draw(samples: tuple[Sample, ...], out: Path, title: str) -> None:
    """Render :func:`layout` of ``samples`` to the PNG ``out``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    from matplotlib.figure import Figure

    chart = layout(samples, title)
    fig = Figure(figsize=(9, 5 if len(chart.panels) > 1 else 3.5))
    axes = fig.subplots(len(chart.panels), 1, sharex=True, squeeze=False)[:, 0]
    nan = float("nan")
    for ax, panel in zip(axes, chart.panels, strict=True):
        for line in panel.series:
            xs = line.times if line.times is not None else chart.times
            ax.plot(xs, [nan if v is None else v for v in line.values], line.style, label=line.label)
        for m in chart.markers:
            if m.end is not None:
                ax.axvspan(m.t, m.end, color="grey", alpha=0.15, linewidth=0)
            else:
                ax.axvline(m.t, linestyle=":", linewidth=0.9, color="red" if m.kind == "oom" else "dimgrey")
        for y in panel.hlines:
            ax.axhline(y, linestyle="--", linewidth=0.8, color="grey")
        ax.set_ylabel(panel.ylabel)
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        else:  # memory from zero (a small change must not look like a large one), with room above the peak
            top = max([v for line in panel.series for v in line.values if v is not None] + list(panel.hlines), default=0)
            ax.set_ylim(0, top * 1.12 or 1)
        if panel.series:
            ax.legend(loc="upper left", fontsize="small")
    if chart.note:
        fig.suptitle(chart.title)
        axes[0].set_title(chart.note, fontsize="small", color="dimgrey")
    else:
        axes[0].set_title(chart.title)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
