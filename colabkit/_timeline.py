"""The memory timeline: GPU memory over a run (device used, torch reserved and allocated, checkpoints, the OOM, gaps)
as an SVG written without matplotlib (``memory.svg``, and the chart in the cell), and a terminal sparkline.

:func:`layout` builds the chart as data (``_plot.Chart``: the same records ``gpu.png`` is drawn from), with
the NVML samples on the sampler's clock and the child's ``steps.csv`` rows moved onto it through the
monotonic clock both processes share. :func:`svg` renders any such chart; :func:`sparkline` squeezes the
recent device memory into a few characters for a one-line status.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from . import _format
from ._plot import Chart, Marker, Panel, Series, unit_for
from ._stats import Sample
from ._steps import Step

__all__ = ["BARS", "gaps", "layout", "sparkline", "svg"]

BARS = "▁▂▃▄▅▆▇█"
GAP_MIN_S = 10.0  # a pause between two steps shorter than this is never a gap
GAP_FACTOR = 10.0  # ... nor one shorter than this many typical steps
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
_DASH = {"-": "", ":": "2,3", "--": "6,4"}
_MARKER_COLORS = {"oom": "#d62728", "creep": "#ff7f0e", "checkpoint": "#2ca02c"}


def gaps(rows: Sequence[Step], offset: float = 0.0) -> list[Marker]:
    """Stretches with no optimizer step (evaluation, a slow data loader, a save): pauses of at least
    ``GAP_MIN_S`` and ``GAP_FACTOR`` times the median time per step. ``offset`` is added to the rows' ``mono_s``."""
    per_step = sorted(
        (b.mono_s - a.mono_s) / b.n for a, b in zip(rows, rows[1:], strict=False) if b.mono_s > a.mono_s
    )
    if not per_step:
        return []
    typical = per_step[len(per_step) // 2]
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        pause = (b.mono_s - a.mono_s) / b.n
        if b.n == 1 and pause >= max(GAP_MIN_S, GAP_FACTOR * typical):
            out.append(Marker(a.mono_s + offset, f"no steps for {_format.format_duration(pause)}", "gap", b.mono_s + offset))
    return out


def layout(
    samples: Sequence[Sample],
    rows: Sequence[Step] = (),
    *,
    title: str,
    t0_mono: float | None = None,
    markers: Sequence[Marker] = (),
) -> Chart:
    """The memory chart of a run: per GPU the device memory used (NVML), torch's reserved and allocated peak
    per step and what stays allocated between steps, each GPU's total as a dashed line, and ``markers``.

    ``t0_mono`` is the sampler's start on ``time.monotonic()``: step rows are drawn at ``mono_s - t0_mono``
    (without it, at the child's own ``t_s``). Gaps between steps are added to the markers.
    """
    times = tuple(s.t for s in samples)
    gpus = max((len(s.used) for s in samples), default=0)
    have_rows = [r for r in rows if r.peak_allocated is not None]
    largest = max(
        [u for s in samples for u in s.used if u is not None]
        + [t for s in samples for t in s.total if t is not None]
        + [r.peak_reserved or 0 for r in have_rows],
        default=None,
    )
    unit, size = unit_for(largest)
    series: list[Series] = []
    for i in range(gpus):
        used = [s.used[i] if i < len(s.used) else None for s in samples]
        series.append(Series(f"GPU{i} used", tuple(None if v is None else v / size for v in used)))
    offset = 0.0
    if have_rows:
        offset = -t0_mono if t0_mono is not None else have_rows[0].t_s - have_rows[0].mono_s
        xs = tuple(r.mono_s + offset for r in have_rows)
        for label, key, style in (
            ("torch reserved (peak per step)", "peak_reserved", "-"),
            ("torch allocated (peak per step)", "peak_allocated", "-"),
            ("torch allocated between steps", "min_allocated", ":"),
        ):
            values = tuple(None if getattr(r, key) is None else getattr(r, key) / size for r in have_rows)
            series.append(Series(label, values, style, xs))
    totals = []
    for i in range(gpus):
        known = [s.total[i] for s in samples if i < len(s.total) and s.total[i] is not None]
        if known:
            totals.append(known[-1] / size)
    note = None if series else "no GPU memory was recorded (no NVIDIA GPU seen, and no CUDA steps from torch)"
    marks = tuple(markers) + tuple(gaps([r for r in rows], offset)) if rows else tuple(markers)
    return Chart(times, (Panel(unit, tuple(series), tuple(totals)),), title, note, gpus, marks)


def _nice(top: float) -> float:
    """A round step for about four ticks up to ``top``."""
    if top <= 0:
        return 1.0
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag  # pragma: no cover


def _points(xs: Sequence[float], ys: Sequence[float | None], sx, sy) -> list[list[tuple[float, float]]]:
    """Runs of screen points without ``None``; per pixel column only the first, lowest, highest and last point
    are kept, so a long run stays a small file and a short spike is still drawn."""
    runs: list[list[tuple[float, float]]] = []
    column: list[tuple[float, float]] = []
    run: list[tuple[float, float]] = []

    def close_column() -> None:
        if column:
            keep = [column[0], min(column, key=lambda p: p[1]), max(column, key=lambda p: p[1]), column[-1]]
            for p in sorted(set(keep), key=column.index):
                run.append(p)
            column.clear()

    for x, y in zip(xs, ys, strict=False):
        if y is None:
            close_column()
            if run:
                runs.append(run)
            run = []
            continue
        p = (sx(x), sy(y))
        if column and int(p[0]) != int(column[0][0]):
            close_column()
        column.append(p)
    close_column()
    if run:
        runs.append(run)
    return runs


def svg(chart: Chart, *, width: int = 720, height: int = 240) -> str:
    """The chart's first panel as a standalone SVG document (escaped text, no scripts, no external files)."""
    panel = chart.panels[0] if chart.panels else Panel("", ())
    left, right, top_m, bottom = 56, 12, 28, 34
    pw, ph = width - left - right, height - top_m - bottom
    xs_all = list(chart.times) + [t for s in panel.series if s.times for t in s.times]
    xs_all += [m.t for m in chart.markers] + [m.end for m in chart.markers if m.end is not None]
    x_max = max(xs_all, default=1.0) or 1.0
    ys = [v for s in panel.series for v in s.values if v is not None] + list(panel.hlines)
    y_max = max(ys, default=1.0) * 1.08 or 1.0

    def sx(x: float) -> float:
        return left + pw * max(0.0, x) / x_max

    def sy(y: float) -> float:
        return top_m + ph * (1 - y / y_max)

    esc = html.escape
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="16" font-size="13">{esc(chart.title)}</text>',
    ]
    step = _nice(y_max)
    y = 0.0
    while y <= y_max:
        out.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{left + pw}" y2="{sy(y):.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
        y += step
    out.append(f'<text x="12" y="{top_m + ph / 2:.1f}" transform="rotate(-90 12 {top_m + ph / 2:.1f})" '
               f'text-anchor="middle">{esc(panel.ylabel)}</text>')  # fmt: skip
    xstep = _nice(x_max)
    x = 0.0
    while x <= x_max:
        out.append(f'<text x="{sx(x):.1f}" y="{top_m + ph + 14}" text-anchor="middle">{esc(_format.format_duration(x))}</text>')
        x += xstep
    out.append(f'<rect x="{left}" y="{top_m}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for m in chart.markers:
        if m.end is not None:
            out.append(f'<rect x="{sx(m.t):.1f}" y="{top_m}" width="{max(1.0, sx(m.end) - sx(m.t)):.1f}" height="{ph}" '
                       f'fill="#888" fill-opacity="0.15"><title>{esc(m.label)}</title></rect>')  # fmt: skip
    for h in panel.hlines:
        out.append(f'<line x1="{left}" y1="{sy(h):.1f}" x2="{left + pw}" y2="{sy(h):.1f}" stroke="#666" stroke-dasharray="5,3"/>')
        out.append(f'<text x="{left + pw - 2}" y="{sy(h) - 3:.1f}" text-anchor="end" fill="#666">GPU total</text>')
    for i, s in enumerate(panel.series):
        color = _COLORS[i % len(_COLORS)]
        dash = _DASH.get(s.style, "")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        xs = s.times if s.times is not None else chart.times
        for run in _points(xs, s.values, sx, sy):
            pts = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
            if len(run) == 1:
                px, py = run[0]
                out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="1.5" fill="{color}"/>')
            else:
                out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"{dash_attr}/>')
        ly = top_m + 12 + 13 * i
        out.append(f'<line x1="{left + 8}" y1="{ly - 4}" x2="{left + 26}" y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash_attr}/>')
        out.append(f'<text x="{left + 30}" y="{ly}">{esc(s.label)}</text>')
    for m in chart.markers:
        if m.end is not None:
            continue
        color = _MARKER_COLORS.get(m.kind, "#555")
        out.append(f'<line x1="{sx(m.t):.1f}" y1="{top_m}" x2="{sx(m.t):.1f}" y2="{top_m + ph}" stroke="{color}" '
                   f'stroke-dasharray="3,2"><title>{esc(m.label)}</title></line>')  # fmt: skip
        right = sx(m.t) > left + 0.75 * pw  # near the right edge the label goes on the line's left
        anchor, dx = ("end", -2) if right else ("start", 2)
        out.append(f'<text x="{sx(m.t) + dx:.1f}" y="{top_m + ph - 4}" text-anchor="{anchor}" fill="{color}" '
                   f'font-size="10">{esc(m.label)}</text>')  # fmt: skip
    if chart.note:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{top_m + ph / 2:.1f}" text-anchor="middle" fill="#666">{esc(chart.note)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" fill="#444">time since the start</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def sparkline(values: Sequence[int | float | None], top: float | None, width: int = 16) -> str:
    """The last ``width`` values as bars from ``▁`` (empty) to ``█`` (``top``, e.g. the GPU's total); unknown ones blank.

    Examples:
        >>> sparkline([0, 4, 8, 12, 16], 16, width=5)
        '▁▃▅▆█'
    """
    recent = list(values)[-width:]
    known = [v for v in recent if v is not None]
    scale = top if top else max(known, default=0)
    if not scale:
        return ""
    out = []
    for v in recent:
        if v is None:
            out.append(" ")
            continue
        level = int(min(1.0, max(0.0, v / scale)) * (len(BARS) - 1) + 0.5)  # half up, not to even
        out.append(BARS[level])
    return "".join(out)
