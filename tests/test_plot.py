"""gpu.png: what the chart says (``layout``, pure) and that matplotlib renders it."""

from __future__ import annotations

import pytest

from colabkit import _plot
from colabkit._stats import Sample

MIB, GIB = 1024**2, 1024**3


def test_the_unit_fits_the_largest_value():
    assert _plot.unit_for(19 * MIB) == ("MiB", MIB)
    assert _plot.unit_for(3 * GIB) == ("GiB", GIB)
    assert _plot.unit_for(512) == ("B", 1)
    assert _plot.unit_for(None) == ("B", 1)


def test_without_a_gpu_the_chart_says_so_and_draws_ram_in_mib():
    samples = tuple(Sample(t=float(i), child_rss_bytes=(10 + i) * MIB) for i in range(10))
    chart = _plot.layout(samples, "train.py: finished")
    assert chart.gpus == 0 and len(chart.panels) == 1
    (panel,) = chart.panels
    assert panel.ylabel == "RAM (MiB)"
    (ram,) = panel.series
    assert ram.values == tuple(float(10 + i) for i in range(10))
    assert chart.note == "no GPU was visible: this run used the CPU, so only its RAM is drawn"


def test_with_a_gpu_memory_is_drawn_in_gib_with_the_total_and_utilisation_apart():
    samples = tuple(
        Sample(t=float(i), used=(i * GIB,), total=(15 * GIB,), util=(50 + i,), temp=(60,), power_w=(70.0,),
               child_gpu_bytes=i * GIB, child_rss_bytes=2 * GIB, attribution="pid")
        for i in range(4)
    )  # fmt: skip
    chart = _plot.layout(samples, "t")
    memory, util = chart.panels
    assert memory.ylabel == "GiB" and memory.hlines == (15.0,)
    assert [s.label for s in memory.series] == ["GPU0 used", "the run (GPU)", "the run (RAM)"]
    assert memory.series[0].values == (0.0, 1.0, 2.0, 3.0)
    assert util.ylim == (0, 105) and util.series[0].values == (50.0, 51.0, 52.0, 53.0)
    assert chart.note is None


def test_a_lost_gpu_reading_is_a_gap_not_zero():
    samples = (Sample(t=0.0, used=(GIB,), total=(15 * GIB,), util=(10,)), Sample(t=1.0, used=(None,), total=(None,), util=(None,)))
    memory, util = _plot.layout(samples, "t").panels
    assert memory.series[0].values == (1.0, None) and util.series[0].values == (10.0, None)


def test_draw_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "gpu.png"
    _plot.draw(tuple(Sample(t=float(i), child_rss_bytes=MIB * (i + 1)) for i in range(3)), out, "cpu run")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_drawn_file_is_a_path_that_a_notebook_shows_as_its_image(tmp_path):
    import base64
    from pathlib import Path

    out = _plot.PlotFile(tmp_path / "gpu.png")
    out.write_bytes(b"\x89PNG fake")
    assert isinstance(out, Path) and out == tmp_path / "gpu.png" and out.parent == tmp_path
    bundle = out._bundle()  # what IPython shows for it: the image, never `PosixPath('...')`
    assert bundle == {"image/png": base64.b64encode(b"\x89PNG fake").decode(), "text/plain": str(tmp_path / "gpu.png")}
    out.unlink()
    assert out._bundle() == {"text/plain": str(tmp_path / "gpu.png")}  # gone since: the path, no error
