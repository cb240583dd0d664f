"""Rendering: the throttled output view in each mode, \\r lines, the status line, formatting."""

from __future__ import annotations

import io
import re

import pytest

from colabkit import _display, _format
from colabkit._monitor import Sample

GIB = 1024**3


def screen(raw: str) -> list[str]:
    """What a terminal (or Jupyter's stream area) shows for ``raw``: \\r returns, ESC[2K clears, \\n ends a line."""
    lines = [""]
    col_text = ""
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[2K", i):
            col_text = ""
            i += 4
            continue
        ch = raw[i]
        if ch == "\r":
            col_text = ""  # next text overwrites from column 0 (our renderers always rewrite the whole line)
        elif ch == "\n":
            lines[-1] = col_text or lines[-1]
            lines.append("")
            col_text = ""
        else:
            col_text += ch
            lines[-1] = col_text
        i += 1
    if lines[-1] == "":
        lines.pop()
    return lines


def test_format_bytes_and_na():
    assert _format.format_bytes(None) == "n/a"
    assert _format.format_bytes(512) == "512 B"
    assert _format.format_bytes(1536) == "1.5 KiB"
    assert _format.format_bytes(15 * GIB) == "15.0 GiB"
    assert _format.na(None, "%") == "n/a" and _format.na(87, "%") == "87%"


def test_format_status_line():
    s = Sample(
        t=75.0,
        used=(3 * GIB,),
        total=(15 * GIB,),
        util=(87,),
        temp=(64,),
        power_w=(70.0,),
        child_rss_bytes=2 * GIB,
    )
    assert (
        _display.format_status(s, 4 * GIB, 75.0)
        == "GPU0 3.0 GiB/15.0 GiB · peak 4.0 GiB · util 87% · 64°C · RAM 2.0 GiB · 1m15s"
    )
    assert _display.format_status(Sample(t=1.0), None, 4.2) == "GPU n/a · 4.2s"


def test_plain_mode_passes_lines_and_keeps_progress_lines_out_until_done():
    out = io.StringIO()
    view = _display.OutputView("plain", out=out)
    view.feed("epoch 1\nepoch 2\n")
    for i in range(100):
        view.feed(f"\r{i:3d}%|")
    view.render(0.0)
    view.feed("\n")
    view.render(1.0, final=True)
    assert out.getvalue() == "epoch 1\nepoch 2\n 99%|\n"


def test_terminal_mode_updates_progress_in_place():
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    view.feed("start\n")
    for step in range(3):
        for i in range(0, 101, 10):
            view.feed(f"\rstep {step} {i:3d}%")
        view.render(float(step))
    view.feed("\ndone\n")
    view.render(9.0, final=True)
    raw = out.getvalue()
    assert screen(raw) == ["start", "step 2 100%", "done"]
    assert raw.count("step") == 4  # one draw per render + the completed line, not one per update


def test_terminal_mode_carries_the_status_on_the_bottom_line():
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    view.status = "GPU0 1.0 GiB/15.0 GiB"
    view.feed("loss 0.5\n 10%|#")
    view.render(0.0)
    assert screen(out.getvalue()) == ["loss 0.5", " 10%|#  [GPU0 1.0 GiB/15.0 GiB]"]
    view.status = ""
    view.feed("\n")
    view.render(1.0, final=True)
    assert screen(out.getvalue()) == ["loss 0.5", " 10%|#"]


def test_windows_line_endings_keep_the_line():
    out = io.StringIO()
    view = _display.OutputView("notebook", out=out)
    view.feed("a\r\nb\r\n")
    view.render(0.0)
    assert screen(out.getvalue()) == ["a", "b"]


def test_a_flood_is_cut_to_the_budget_with_a_note():
    out = io.StringIO()
    view = _display.OutputView("notebook", out=out, refresh_s=0.25, max_lines_per_s=100)
    view.feed("".join(f"line {i}\n" for i in range(10_000)))
    view.render(0.0)
    shown = screen(out.getvalue())
    assert shown[0] == "... 9975 lines not shown, see output.log"
    assert shown[1:] == [f"line {i}" for i in range(9975, 10_000)]
    assert view.hidden == 9975


def test_due_throttles_to_the_refresh_interval():
    view = _display.OutputView("plain", out=io.StringIO(), refresh_s=0.25)
    assert view.due(0.0)
    view.render(0.0)
    assert not view.due(0.2)
    assert view.due(0.25)


def test_status_line_in_a_notebook_updates_one_display_in_place(monkeypatch):
    pytest.importorskip("IPython")
    import IPython.display

    calls = []

    class Handle:
        def update(self, data, raw=False):
            calls.append(("update", data["text/plain"], data["text/html"], raw))

    def fake_display(data, raw=False, display_id=None):
        calls.append(("display", data["text/plain"], data["text/html"], raw, display_id))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    line = _display.StatusLine("notebook")
    line.update("GPU0 <1.0 GiB>", 0.0)
    line.update("GPU0 2.0 GiB", 0.5)
    line.close("done")
    assert [c[0] for c in calls] == ["display", "update", "update"]
    assert calls[0][1:] == ("GPU0 <1.0 GiB>", "<pre style='margin:0'>GPU0 &lt;1.0 GiB&gt;</pre>", True, True)
    assert calls[2][1] == "done"


def test_status_line_in_plain_mode_prints_now_and_then(capsys):
    line = _display.StatusLine("plain")
    for t in range(0, 61):
        line.update(f"t={t}", float(t))
    out = capsys.readouterr().out
    assert re.findall(r"t=\d+", out) == ["t=30", "t=60"]
