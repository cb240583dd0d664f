"""What the script printed, as it printed it: a byte-exact output.log, a growing line sent once, nested tqdm bars kept
in place (in a terminal and in a notebook), an ANSI-aware width cut; secrets in ``key=value`` arguments; the
run's real RAM use with forked workers.

Each test states the promise it holds in its docstring. ``terminal()`` and ``notebook()`` below play a
terminal and Jupyter's output area independently of colabkit's own screen model.
"""

from __future__ import annotations

import io
import json
import re
import textwrap

import pytest

from colabkit import _display, _run
from colabkit._screen import cut, visible_len

_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")


def terminal(raw: str) -> list[str]:
    """What a terminal shows for ``raw`` (colours dropped): text overwrites at the cursor, \\r, \\n, \\b, ESC[A/B/C/D/G/K/J."""
    rows = [[]]
    r = c = 0
    i = 0
    while i < len(raw):
        m = _CSI.match(raw, i)
        if m:
            args, cmd = m.group(1), m.group(2)
            n = int(args.split(";")[0]) if args.split(";")[0].isdigit() else 0
            if cmd == "A":
                r = max(0, r - max(1, n))
            elif cmd == "B":
                r = min(len(rows) - 1, r + max(1, n))
            elif cmd == "C":
                c += max(1, n)
            elif cmd == "D":
                c = max(0, c - max(1, n))
            elif cmd == "G":
                c = max(0, n - 1)
            elif cmd == "K":
                if args in ("", "0"):
                    del rows[r][c:]
                elif args == "2":
                    rows[r] = []
            elif cmd == "J":
                del rows[r][c:]
                del rows[r + 1 :]
            i = m.end()
            continue
        ch = raw[i]
        if ch == "\n":
            r += 1
            c = 0
            if r == len(rows):
                rows.append([])
        elif ch == "\r":
            c = 0
        elif ch == "\b":
            c = max(0, c - 1)
        else:
            row = rows[r]
            row.extend(" " * (c - len(row)))
            if c < len(row):
                row[c] = ch
            else:
                row.append(ch)
            c += 1
        i += 1
    lines = ["".join(row).rstrip() for row in rows]
    while lines and not lines[-1]:
        lines.pop()
    return lines


class FakeDisplay:
    """IPython's ``display(..., display_id=True)`` and its handle, recording outputs as Jupyter keeps them."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream
        self.outputs: list[list] = []  # ["stream", text] or ["display", text], in the order they appeared
        self.updates = 0
        self._streamed = 0

    def _sync(self) -> None:
        text = self.stream.getvalue()[self._streamed :]
        self._streamed += len(text)
        if text:
            if self.outputs and self.outputs[-1][0] == "stream":
                self.outputs[-1][1] += text
            else:
                self.outputs.append(["stream", text])

    def __call__(self, data, raw=False, display_id=None):
        self._sync()
        slot = ["display", data["text/plain"]]
        self.outputs.append(slot)
        fake = self

        class Handle:
            def update(self, data, raw=False):
                fake._sync()
                fake.updates += 1
                slot[1] = data["text/plain"]

        return Handle()

    def shown(self) -> list[str]:
        """What the cell's output area shows: stream text with Jupyter's \\r rule, displays as they are now."""
        self._sync()
        lines: list[str] = []
        for kind, text in self.outputs:
            lines += notebook(text) if kind == "stream" else [ln.rstrip() for ln in text.split("\n") if ln.strip()]
        return lines


def notebook(text: str) -> list[str]:
    """Jupyter's stream rendering: after \\r, text is written over the line from its start; no cursor moves."""
    assert "\x1b[A" not in text, "a notebook cannot move the cursor up: the bar would be drawn again below"
    out = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        out.append(shown.rstrip())
    while out and not out[-1]:
        out.pop()
    return out


def nested_bars() -> str:
    """What real nested tqdm bars write (an epoch bar, a batch bar with ``leave=False``, a ``tqdm.write``)."""
    from tqdm import tqdm

    buf = io.StringIO()
    for epoch in tqdm(range(3), desc="epoch", position=0, file=buf, ncols=60, mininterval=0, ascii=True):
        for _ in tqdm(range(50), desc="batch", position=1, leave=False, file=buf, ncols=60, mininterval=0, ascii=True):
            pass
        tqdm.write(f"epoch {epoch} done", file=buf)
    return buf.getvalue()


# -- output.log ------------------------------------------------------------------------------------------
def test_output_log_is_byte_exact(proj):
    """Promise: output.log holds the bytes the script wrote, as written: not UTF-8, NUL, \\r, escapes, a last line without end."""
    payload = bytes(range(256)) * 40 + b"\xff\xfe not utf-8 \xc3\x28\r\n" + "é日本\n".encode() + b"\x1b[31mred\x1b[0m tail"
    (proj / "payload.bin").write_bytes(payload)
    (proj / "raw.py").write_text(
        "import sys\ndata = open('payload.bin', 'rb').read()\n"
        "for i in range(0, len(data), 777):\n"
        "    out = sys.stdout.buffer if i % 2 else sys.stderr.buffer\n"
        "    out.write(data[i:i + 777]); out.flush()\n"
    )
    r = _run.run("raw.py", monitor=False)
    assert r.log_path.read_bytes() == payload


# -- a line that keeps growing --------------------------------------------------------------------------
def test_a_growing_line_is_sent_to_a_notebook_once_not_again_each_refresh():
    """Promise: a 50 KB line written without a newline costs the notebook about its own size, not its size
    at every refresh (the cost stays linear), and shows whole."""
    out = io.StringIO()
    view = _display.OutputView("notebook", out=out)
    line = "".join(f"{i:04d}," for i in range(10_000))  # 50 KB, no newline
    for k in range(0, len(line), 100):
        view.feed(line[k : k + 100])
        view.render(k / 100 * 0.25)
    assert len(out.getvalue()) <= 2 * len(line)
    assert notebook(out.getvalue()) == [line]
    view.feed("\nnext\n")  # the line ends at last: it is not sent again
    view.render(1e6, final=True)
    assert len(out.getvalue()) <= len(line) + len("\nnext\n")
    assert notebook(out.getvalue()) == [line, "next"]


def test_a_growing_line_in_a_terminal_is_cut_to_the_width(monkeypatch):
    """Promise: on a terminal the same line costs at most a screen width per refresh."""
    monkeypatch.setenv("COLUMNS", "81")
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    for k in range(500):
        view.feed("x" * 100)
        view.render(float(k))
    assert len(out.getvalue()) < 500 * 100
    assert terminal(out.getvalue()) == ["x" * 80]


# -- nested progress bars ------------------------------------------------------------------------------
def test_nested_tqdm_bars_stay_in_place_on_a_terminal():
    """Promise: nested bars redrawn with cursor-up escapes look on colabkit's terminal as on the script's own."""
    raw = nested_bars()
    assert "\x1b[A" in raw  # tqdm moves the cursor up for the batch bar
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out, max_lines_per_s=10**6)
    for k in range(0, len(raw), 97):  # in pieces, as a pipe delivers them, with redraws between
        view.feed(raw[k : k + 97])
        view.render(k / 97)
    view.render(1e6, final=True)
    assert terminal(out.getvalue()) == terminal(raw)
    assert terminal(raw) == ["epoch 0 done", "epoch 1 done", "epoch 2 done", terminal(raw)[-1]]
    assert terminal(raw)[-1].startswith("epoch: 100%|")


def test_nested_tqdm_bars_stay_in_place_in_a_notebook():
    """Promise: in a notebook (no cursor moves there) nested bars become one output updated in place, with
    the lines printed meanwhile above them in order, and end as the terminal shows them."""
    raw = nested_bars()
    stream = io.StringIO()
    fake = FakeDisplay(stream)
    view = _display.OutputView("notebook", out=stream, display=fake, max_lines_per_s=10**6)
    view.feed("starting\n")
    view.render(0.0)
    for k in range(0, len(raw), 97):
        view.feed(raw[k : k + 97])
        view.render(1.0 + k / 97)
    view.feed("training done\n")
    view.render(1e6, final=True)
    assert fake.shown() == ["starting", *terminal(raw), "training done"]
    assert len([o for o in fake.outputs if o[0] == "display"]) == 1  # one output, updated in place
    assert fake.updates > 10
    bars = [line for line in fake.shown() if "it/s" in line or "|" in line]
    assert len(bars) == 1  # no bar drawn again below the last one


def test_a_saved_notebook_read_outside_a_live_front_end_holds_each_line_once():
    """Promise: a notebook saved after a run, read where stream text is shown as saved (every ``\\r`` state
    on a line of its own, as plain viewers do), shows each line of the run once: a bar redrawn with ``\\r``
    lives in an output updated in place, whose last state is what is saved."""
    stream = io.StringIO()
    fake = FakeDisplay(stream)
    view = _display.OutputView("notebook", out=stream, display=fake, max_lines_per_s=10**6)
    view.feed("Overriding config with config/train_shakespeare_char.py:\n")
    view.render(0.0)
    for step in range(0, 101, 5):
        view.feed(f"\repoch 0: {step:3d}%|")
        view.render(1.0 + step)
    view.feed("\nepoch 0 loss 1.000\n")
    view.render(1e6, final=True)
    saved = [line for _, text in fake.outputs for line in text.replace("\r", "\n").split("\n") if line.strip()]
    assert saved == ["Overriding config with config/train_shakespeare_char.py:", "epoch 0: 100%|", "epoch 0 loss 1.000"]
    assert fake.shown() == saved  # and a live front end shows the same


def test_real_nested_tqdm_bars_of_a_child_stay_in_place(proj, monkeypatch, capsys):
    """Promise: a real script's nested tqdm bars, through run() on a terminal, end as tqdm draws them."""
    pytest.importorskip("tqdm")
    monkeypatch.setenv("COLABKIT_DISPLAY", "terminal")
    (proj / "bars.py").write_text(
        textwrap.dedent(
            """
            import sys, time
            from tqdm import tqdm
            for epoch in tqdm(range(3), desc="epoch", position=0, ncols=60, ascii=True, mininterval=0):
                for _ in tqdm(range(40), desc="batch", position=1, leave=False, ncols=60, ascii=True, mininterval=0):
                    time.sleep(0.002)
                tqdm.write(f"epoch {epoch} done")
            print("training done")
            """
        )
    )
    r = _run.run("bars.py", monitor=False)
    shown = terminal(capsys.readouterr().out)
    mine = [line for line in shown if not line.startswith("bars.py") and line[:4] not in ("log:", "[col")]
    logged = terminal(r.log_path.read_bytes().decode())  # read_text() would turn each \r into a new line
    assert mine == logged  # the screen shows what the script's own terminal would
    assert logged[:3] == ["epoch 0 done", "epoch 1 done", "epoch 2 done"]
    assert logged[3].startswith("epoch: 100%|") and logged[4] == "training done"


# -- the width cut ---------------------------------------------------------------------------------------------
def test_the_terminal_width_cut_ignores_colour_escapes_and_keeps_the_reset(monkeypatch):
    """Promise: a coloured bar cut to the terminal's width is cut at the width it takes, and the colour is switched off after."""
    assert cut("\x1b[32m" + "#" * 100 + "\x1b[0m", 40) == "\x1b[32m" + "#" * 40 + "\x1b[0m"
    assert cut("plain text", 5) == "plain"
    assert visible_len("\x1b[1;31mred\x1b[0m") == 3
    monkeypatch.setenv("COLUMNS", "53")
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    view.status = "GPU n/a · 1.0s"
    view.feed("\x1b[32m" + "#" * 30 + "\x1b[0m" + " 50%")
    view.render(0.0)
    assert terminal(out.getvalue()) == ["#" * 30 + " 50%  [GPU n/a · 1.0s]"]  # 52 columns: the escapes took none
    monkeypatch.setenv("COLUMNS", "41")
    out = io.StringIO()
    view = _display.OutputView("terminal", out=out)
    view.status = "GPU n/a · 1.0s"
    view.feed("\x1b[32m" + "#" * 50 + "\x1b[0m")
    view.render(0.0)
    raw = out.getvalue()
    assert terminal(raw) == ["#" * 40]  # cut to 40 columns; no room left for any part of the status
    assert raw.endswith("\x1b[0m")  # the colour does not run into what follows


# -- secrets in arguments ------------------------------------------------------------------------------------
def test_hydra_style_secret_overrides_are_redacted_and_the_script_gets_them(proj, capsys):
    """Promise: ``key=value`` overrides whose names say secret are recorded as ``***`` (summary, result, screen),
    harmless ones such as ``--max-tokens 512`` stay, and the script gets every value as given."""
    (proj / "argv.py").write_text("import sys, json\nopen('argv.json', 'w').write(json.dumps(sys.argv[1:]))\n")
    args = ["api_key=sk-live-1", "wandb.api_key=wk-2", "+hf_token=hf-3", "trainer.max_epochs=3", "--max-tokens", "512"]
    r = _run.run("argv.py", *args, monitor=False)
    assert json.loads((proj / "argv.json").read_text()) == args
    shown = ["api_key=***", "wandb.api_key=***", "+hf_token=***", "trainer.max_epochs=3", "--max-tokens", "512"]
    assert list(r.args) == shown
    assert json.loads((r.log_dir / "summary.json").read_text())["args"] == shown
    everything = capsys.readouterr().out + repr(r) + r.summary() + r.log_path.read_text()
    assert not re.search(r"sk-live-1|wk-2|hf-3", everything)


# -- RAM of forked workers ---------------------------------------------------------------------------------
def test_ram_peak_counts_pages_shared_by_forked_workers_once(proj):
    """Promise: the run's RAM peak is what its processes use together (PSS), not the sum of their RSS, which
    counts the pages forked workers share with their parent once per worker; the result says how it counted."""
    (proj / "workers.py").write_text(
        textwrap.dedent(
            """
            import os, time
            data = b"\\x01" * (96 * 1024 * 1024)   # 96 MiB, resident in the parent
            kids = []
            for _ in range(4):                      # like a DataLoader's forked workers: they share those pages
                pid = os.fork()
                if pid == 0:
                    time.sleep(4.5)                 # longer than the 3 s between two walks of the tree
                    os._exit(0)
                kids.append(pid)
            time.sleep(4.5)
            for pid in kids:
                os.waitpid(pid, 0)
            """
        )
    )
    r = _run.run("workers.py", interval=0.2)
    stats = r.stats
    mib = 1024**2
    assert stats.child_ram_kind == "pss"
    assert 90 * mib <= stats.child_peak_rss_bytes < 200 * mib, stats.child_peak_rss_bytes / mib  # RSS would be ~480 MiB
    assert "RAM peak" in stats.describe() and "(PSS)" in stats.describe()


FLOOD_THEN_STOP = """\
import sys, time


def train():
    n = 0
    while True:
        sys.stdout.write("".join(f"iter {n + i}: loss 1.0\\n" for i in range(500)))
        sys.stdout.flush()
        n += 500
        time.sleep(0.01)


""" + "".join(f"def layer_{i}():\n    layer_{i + 1}()\n\n\n" for i in range(20)) + "def layer_20():\n    train()\n\n\nlayer_0()\n"


def test_the_traceback_of_a_script_stopped_in_a_flood_is_on_screen_whole(proj, monkeypatch, capsys):
    """Promise: Stop in the middle of a flood of output: the lines around it give way on screen (they are in
    output.log), but the script's traceback is shown whole, its own frames included."""
    from colabkit._spec import RunSpec, StopTimes

    monkeypatch.setenv("COLABKIT_DISPLAY", "plain")
    (proj / "flood.py").write_text(FLOOD_THEN_STOP)

    stopped = []

    def stop(state):
        seen = re.findall(r"iter (\d+)", state.seen)
        if not stopped and seen and int(seen[-1]) > 3000:  # the flood has gone on for a while
            stopped.append(True)
            raise KeyboardInterrupt  # what Stop does to run(): the stop sequence, SIGINT first

    with pytest.raises(KeyboardInterrupt):
        _run.execute(RunSpec.build("flood.py", (), monitor=False, stop=StopTimes(int_grace=5.0), observer=stop))
    out = capsys.readouterr().out
    assert "lines not shown, see output.log" in out
    # off a notebook there is no Stop button to press
    assert "colabkit: interrupted; stopping the run (press Ctrl-C again to kill it at once)\n" in out
    tb = out[out.index("Traceback (most recent call last):") :].splitlines()
    # 22 frames, 46 lines: more than the screen's budget of 25 lines, shown whole from the top
    assert tb[1].endswith(", in <module>")
    assert [line.strip() for line in tb[2:43:2]] == [f"layer_{i}()" for i in range(21)], tb  # the user's own frames
    assert tb[43].endswith(", in layer_20") and tb[44] == "    train()"
    assert re.search(r'flood\.py", line (7|8|10), in train$', tb[45]), tb  # where SIGINT found it
    assert tb[46].strip() in [line.strip() for line in FLOOD_THEN_STOP.splitlines()[6:10]]  # its line, in train()
    assert "KeyboardInterrupt" in tb[47:50], tb
