"""colabkit._timeline: the memory chart as data, the SVG written without matplotlib, gaps, and the sparkline."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from colabkit import _plot, _timeline
from colabkit._plot import Marker
from colabkit._stats import Sample
from colabkit._steps import Step

GIB = 1024**3
MIB = 1024**2
NS = "{http://www.w3.org/2000/svg}"


def samples(n=20, total=15 * GIB):
    return tuple(Sample(t=float(i), used=(1 * GIB + i * 100 * MIB,), total=(total,), util=(50,)) for i in range(n))


def step_rows(n=10, t0_mono=500.0, start=2.0):
    # the child's steps, on the monotonic clock: the sampler started at t0_mono
    return [Step(i, 1.0 + i, t0_mono + start + i, 1, 0, GIB, 2 * GIB, GIB + 512 * MIB, 2 * GIB, GIB) for i in range(1, n + 1)]


def test_layout_puts_steps_on_the_samplers_clock():
    chart = _timeline.layout(samples(), step_rows(), title="train.py: running", t0_mono=500.0)
    (panel,) = chart.panels
    assert panel.ylabel == "GiB" and panel.hlines == (15.0,)
    labels = [s.label for s in panel.series]
    assert labels == ["GPU0 used", "torch reserved (peak per step)", "torch allocated (peak per step)",
                      "torch allocated between steps"]  # fmt: skip
    reserved = panel.series[1]
    assert reserved.times[:2] == (3.0, 4.0)  # mono 503.0 - 500.0: step 1, a second after the sampler's 2 s
    assert reserved.values[0] == 2.0 and panel.series[2].values[0] == 1.5 and panel.series[3].style == ":"
    assert panel.series[0].times is None and chart.times[:3] == (0.0, 1.0, 2.0)


def test_without_the_samplers_clock_steps_use_the_scripts_own_time():
    chart = _timeline.layout((), step_rows(), title="t")
    assert chart.panels[0].series[0].times[0] == 2.0  # t_s of step 1
    assert chart.note is None


def test_nothing_recorded_says_so():
    chart = _timeline.layout((), [Step(1, 1, 1, 1, None, None, None, None, None, None)], title="t")
    assert chart.panels[0].series == ()
    assert chart.note == "no GPU memory was recorded (no NVIDIA GPU seen, and no CUDA steps from torch)"
    doc = ET.fromstring(_timeline.svg(chart))
    assert "no GPU memory was recorded" in "".join(doc.itertext())


def test_gaps_between_steps_are_marked():
    rows = step_rows(20)
    rows[12:] = [Step(r.step, r.t_s + 60, r.mono_s + 60, 1, 0, GIB, 2 * GIB, GIB, 2 * GIB, GIB) for r in rows[12:]]
    (gap,) = _timeline.gaps(rows, offset=-500.0)
    assert (gap.kind, gap.t, gap.end, gap.label) == ("gap", 14.0, 75.0, "no steps for 1m01s")
    assert _timeline.gaps(step_rows(20)) == []  # a steady run has none


def test_svg_is_a_standalone_document_with_every_series_and_marker():
    markers = (Marker(8.0, "checkpoint 2", "checkpoint"), Marker(19.5, "out of memory", "oom"))
    chart = _timeline.layout(samples(), step_rows(), title="train.py <b> & co", t0_mono=500.0, markers=markers)
    text = _timeline.svg(chart)
    doc = ET.fromstring(text)  # well-formed, so the title was escaped
    assert doc.tag == f"{NS}svg" and doc.get("width") == "720"
    words = "".join(doc.itertext())
    assert "train.py <b> & co" in words and "&lt;b&gt;" in text
    for label in ("GPU0 used", "torch reserved (peak per step)", "torch allocated between steps", "GPU total",
                  "checkpoint 2", "out of memory"):  # fmt: skip
        assert label in words
    polylines = doc.findall(f"{NS}polyline")
    assert len(polylines) == 4
    assert polylines[3].get("stroke-dasharray") == "2,3"  # the floor is dotted
    assert "script" not in text and "href" not in text


def test_a_long_run_stays_a_small_file_and_keeps_its_spike():
    many = [Sample(t=i * 0.1, used=(GIB if i != 50_000 else 14 * GIB,), total=(15 * GIB,)) for i in range(100_000)]
    chart = _timeline.layout(tuple(many), title="long")
    text = _timeline.svg(chart)
    assert len(text) < 60_000
    (line,) = ET.fromstring(text).findall(f"{NS}polyline")
    ys = [float(p.split(",")[1]) for p in line.get("points").split()]
    assert max(ys) - min(ys) > 120  # the 14 GiB spike (near the top, 1 GiB near the bottom) survived the thinning


def test_the_same_chart_draws_with_matplotlib(tmp_path):
    markers = (Marker(8.0, "checkpoint", "checkpoint"), Marker(3.0, "gap", "gap", 5.0))
    chart = _timeline.layout(samples(), step_rows(), title="t", t0_mono=500.0, markers=markers)
    assert isinstance(chart, _plot.Chart)
    _plot.draw(samples(), tmp_path / "gpu.png", "t")  # the old chart still draws
    assert (tmp_path / "gpu.png").stat().st_size > 0


def test_sparkline():
    assert _timeline.sparkline([0, 4, 8, 12, 16], 16, width=5) == "▁▃▅▆█"
    assert _timeline.sparkline([16, None, 0], 16) == "█ ▁"
    assert _timeline.sparkline(list(range(100)), 99, width=4) == "████"  # the last four only
    assert _timeline.sparkline([1, 2], None) == "▅█"  # no total: scaled to the largest
    assert _timeline.sparkline([], 16) == "" and _timeline.sparkline([None], None) == ""
