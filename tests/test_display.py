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
    no_gpu = Sample(t=1.0, child_rss_bytes=19 * 1024**2)  # no GPU on this machine, said once before the run
    assert _display.format_status(no_gpu, None, 4.2, gpu=False) == "RAM 19.0 MiB · 4.2s"


def test_format_status_one_line_per_gpu():
    s = Sample(
        t=75.0,
        used=(3 * GIB, 5 * GIB),
        total=(15 * GIB, 15 * GIB),
        util=(87, None),
        temp=(64, 61),
        power_w=(70.0, 60.0),
        child_rss_bytes=2 * GIB,
    )
    assert _display.format_status(s, [4 * GIB, 6 * GIB], 75.0).splitlines() == [
        "GPU0 3.0 GiB/15.0 GiB · peak 4.0 GiB · util 87% · 64°C",
        "GPU1 5.0 GiB/15.0 GiB · peak 6.0 GiB · util n/a · 61°C",
        "RAM 2.0 GiB · 1m15s",
    ]
    one = Sample(t=1.0, used=(3 * GIB,), total=(15 * GIB,), util=(87,), temp=(64,), power_w=(70.0,))
    assert _display.format_status(one, [4 * GIB], 1.0) == "GPU0 3.0 GiB/15.0 GiB · peak 4.0 GiB · util 87% · 64°C · 1.0s"


def test_terminal_bottom_line_joins_the_gpu_lines():
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    view.status = "GPU0 1.0 GiB/15.0 GiB\nGPU1 2.0 GiB/15.0 GiB\n3.0s"
    view.feed("step 1")
    view.render(0.0)
    assert screen(out.getvalue()) == ["step 1  [GPU0 1.0 GiB/15.0 GiB │ GPU1 2.0 GiB/15.0 GiB │ 3.0s]"]


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


def test_a_flood_is_cut_to_the_budget_keeping_its_head_and_tail_with_a_note_between():
    out = io.StringIO()
    view = _display.OutputView("notebook", out=out, refresh_s=0.25, max_lines_per_s=100)
    view.feed("".join(f"line {i}\n" for i in range(10_000)))
    view.render(0.0)
    shown = screen(out.getvalue())
    assert shown[:8] == [f"line {i}" for i in range(8)]  # a budget of 25 lines: the first third, then the rest
    assert shown[8] == "... 9975 lines not shown, see output.log"
    assert shown[9:] == [f"line {i}" for i in range(9983, 10_000)]
    assert view.hidden == 9975


NANOGPT_CONFIG = [  # what nanoGPT's train.py prints at its start, all at once: the config it runs with
    "Overriding config with config/train_shakespeare_char.py:",
    "# train a miniature character-level shakespeare model",
    "out_dir = 'out-shakespeare-char'",
    *(f"setting_{i} = {i}" for i in range(30)),
    "tokens per iteration will be: 16,384",
    "found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)",
    "Initializing a new model from scratch",
    "number of parameters: 10.65M",
]


def test_a_config_dump_at_the_start_keeps_its_first_lines_on_screen():
    out = io.StringIO()
    view = _display.OutputView("notebook", out=out)
    view.feed("\n".join(NANOGPT_CONFIG) + "\n")
    view.render(0.0)
    view.feed("step 0: train loss 4.2874, val loss 4.2823\n")
    view.render(1.0, final=True)
    shown = screen(out.getvalue())
    assert shown[:3] == NANOGPT_CONFIG[:3]  # which config file, and what it overrides
    hidden = len(NANOGPT_CONFIG) - 25
    assert shown[8] == f"... {hidden} lines not shown, see output.log"
    assert shown[9:] == NANOGPT_CONFIG[-17:] + ["step 0: train loss 4.2874, val loss 4.2823"]


def test_a_72_line_help_shows_its_usage_and_its_end():
    out = io.StringIO()
    view = _display.OutputView("plain", out=out)
    usage = ["usage: train.py [-h] [--lr LR] ...", "", "options:"]
    text = usage + [f"  --option-{i} VALUE  what option {i} does" for i in range(len(usage), 72)]
    view.feed("\n".join(text) + "\n")
    view.render(0.0, final=True)
    shown = out.getvalue().splitlines()
    assert shown[:3] == usage
    assert shown[8] == "... 47 lines not shown, see output.log"
    assert shown[9:] == text[-17:]


def test_a_traceback_after_stop_is_shown_whole_in_a_flood():
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    frames = [f'  File "/content/drive/MyDrive/test/train.py", line {i}, in step_{i}\n    step_{i + 1}()' for i in range(20)]
    tb = ["Traceback (most recent call last):", *"\n".join(frames).split("\n"), "KeyboardInterrupt"]
    view.feed("".join(f"iter {i}: loss 1.0\n" for i in range(200)) + "\n".join(tb) + "\n")
    view.render(0.0, final=True)
    shown = screen(out.getvalue())
    assert shown[-len(tb) :] == tb  # 42 lines, more than the budget: the user's own frames included
    assert shown[:8] == [f"iter {i}: loss 1.0" for i in range(8)]  # the loss lines before it: head and tail
    assert shown[8] == "... 175 lines not shown, see output.log"
    assert shown[9 : -len(tb)] == [f"iter {i}: loss 1.0" for i in range(183, 200)]


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


def test_the_screen_writes_over_like_a_terminal_and_takes_escapes_cut_anywhere():
    """Promise: the screen model draws as a terminal does: \\r writes over from the start, ESC[K/2K erase,
    colours take no columns, and an escape sequence split between two reads of the pipe still works."""
    from colabkit._screen import Screen

    s = Screen()
    s.feed("abcdef\rxy")
    assert s.rows == ["xycdef"]
    s.feed("\x1b[")  # a pipe read ends inside an escape sequence ...
    s.feed("K")  # ... and the next one finishes it
    assert s.rows == ["xy"]
    s.feed("\r\x1b[31mred\x1b[0m")
    assert s.rows == ["\x1b[31mred\x1b[0m"] and s.col == 3
    s.feed("\x1b[2K\rdone\n")
    assert s.take() == (["done"], 1) and s.rows == [""]


def test_a_line_the_script_moves_back_up_into_becomes_a_redrawn_row():
    """Promise: rows above the last become a window the script redraws (nested bars), never finished lines."""
    from colabkit._screen import Screen

    s = Screen()
    s.feed("outer 0%\n")
    s.feed("\rinner 0%")
    assert s.take() == ([], 0)  # held back once: the script may be about to move up into it
    s.feed("\x1b[A\router 50%")
    assert (s.rows, s.row, s.height, s.multi) == (["outer 50%", "inner 0%"], 0, 2, True)
    assert s.take() == ([], 0)


def test_a_status_that_does_not_fit_the_terminal_loses_whole_parts_never_half_a_word(monkeypatch):
    monkeypatch.setenv("COLUMNS", "61")  # 60 columns to draw in
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    view.status = "GPU0 3.2 GiB/15.0 GiB · peak 4.1 GiB · util 87% · 64°C · RAM 2.1 GiB · 1m15s"
    view.feed("step 10 loss 0.52")
    view.render(0.0)
    (row,) = screen(out.getvalue())
    assert row == "step 10 loss 0.52  [GPU0 3.2 GiB/15.0 GiB · peak 4.1 GiB]"  # 57 columns: the next part is too long
    view.feed("\n")
    view.render(1.0, final=True)


def test_a_note_after_an_unfinished_line_starts_on_its_own_line(capsys):
    view = _display.OutputView("notebook")
    view.feed("epoch 1:  40%|####      | 4/10")
    view.render(0.0)
    _display.note("colabkit: interrupted; stopping the run (press Stop again to kill it at once)")
    view.feed("\repoch 1:  40%|####      | 4/10\nKeyboardInterrupt\n")  # tqdm closes its bar, Python says why
    view.render(1.0, final=True)
    assert capsys.readouterr().out.split("\n") == [
        "epoch 1:  40%|####      | 4/10",
        "colabkit: interrupted; stopping the run (press Stop again to kill it at once)",
        "KeyboardInterrupt",
        "",
    ]
