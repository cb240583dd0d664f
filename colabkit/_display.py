"""Notebook vs terminal output: the status line, the throttled child output, notes and frames.

One formatter, three renderers (``runtime.display_mode()``): ``notebook`` updates one output in place
through an IPython display handle, ``terminal`` redraws a ``\\r`` line padded to its last length,
``plain`` (a pipe or a file) writes whole lines now and then.
"""

from __future__ import annotations

import html
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, TextIO

from . import _format, _runtime, _screen

__all__ = [
    "Chart",
    "OutputView",
    "StatusLine",
    "format_status",
    "html_cell",
    "note",
    "note_once",
    "said",
    "screen_gone",
    "show",
    "show_image",
]

REFRESH_S = 0.25  # about four screen updates a second
MAX_LINES_PER_S = 100  # beyond this the screen shows a note and output.log keeps the rest
PLAIN_STATUS_S = 30.0  # how often a pipe gets a status line
PLAIN_PROGRESS_S = 10.0  # how often a pipe gets the latest state of a \r progress line
PANE_LINES = 50  # finished lines a notebook's in-place progress output holds before a new one starts

def html_pre(text: str) -> str:
    """Text as an escaped ``<pre>`` block for ``_repr_html_``."""
    return f"<pre>{html.escape(text)}</pre>"


LEFT = "text-align:left;vertical-align:top"  # JupyterLab's CSS aligns table cells right; Colab's frame, centre


def html_cell(content: str, tag: str = "td", style: str = "") -> str:
    """One table cell of ``_repr_html_``, aligned left under any notebook's CSS; ``content`` is HTML already."""
    return f"<{tag} style='{LEFT}{';' + style if style else ''}'>{content}</{tag}>"


def format_status(sample: Any, peak: Any, elapsed_s: float, *, gpu: bool = True) -> str:
    """The status line: GPU used/total, peak, utilisation, temperature, RAM of the child, time.

    ``gpu=False`` (no GPU, said once before the run) leaves the GPU out: RAM and time only.

    With more than one GPU, one line per GPU (its memory, its own peak when ``peak`` is a list of one per
    GPU, utilisation, temperature), then a line with the child's RAM and the time.

    Examples:
        >>> format_status(sample, peak, 75.0)
        'GPU0 3.2 GiB/15.0 GiB · peak 4.1 GiB · util 87% · 64°C · RAM 2.1 GiB · 1m15s'
        >>> print(format_status(two_gpus, [4.1 * GIB, 3.9 * GIB], 75.0))
        GPU0 3.2 GiB/15.0 GiB · peak 4.1 GiB · util 87% · 64°C
        GPU1 3.0 GiB/15.0 GiB · peak 3.9 GiB · util 85% · 61°C
        RAM 4.2 GiB · 1m15s
    """
    fb = _format.format_bytes
    tail = []
    if sample is not None and sample.child_rss_bytes is not None:
        tail.append(f"RAM {fb(sample.child_rss_bytes)}")
    tail.append(_format.format_duration(elapsed_s))
    if sample is not None and len(sample.used) > 1:
        peaks = list(peak) if isinstance(peak, (list, tuple)) else [peak] * len(sample.used)
        lines = []
        for i, used in enumerate(sample.used):
            total = sample.total[i] if i < len(sample.total) else None
            own = peaks[i] if i < len(peaks) else None
            util = sample.util[i] if i < len(sample.util) else None
            temp = sample.temp[i] if i < len(sample.temp) else None
            lines.append(
                f"GPU{i} {fb(used)}/{fb(total)} · peak {fb(own)} · util {_format.na(util, '%')} · {_format.na(temp, '°C')}"
            )
        return "\n".join([*lines, " · ".join(tail)])
    if isinstance(peak, (list, tuple)):
        peak = max((p for p in peak if p is not None), default=None)
    parts = []
    if not gpu:
        pass
    elif sample is None or not sample.used:
        parts.append("GPU n/a")
    else:
        for i, (used, total) in enumerate(zip(sample.used, sample.total, strict=False)):
            parts.append(f"GPU{i} {fb(used)}/{fb(total)}")
        parts.append(f"peak {fb(peak)}")
        parts.append("util " + "/".join(_format.na(u, "%") for u in sample.util))
        parts.append("/".join(_format.na(t, "°C") for t in sample.temp))
    return " · ".join(parts + tail)


class _NullScreen:
    """Where screen output goes once the real screen is gone (a closed pipe: ``colabkit run x.py | head``)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


_NULL_SCREEN = _NullScreen()
_lost: list[Any] = []  # screens that failed; kept (not just their ids) so an id cannot be reused


def _out() -> Any:
    out = sys.stdout
    return _NULL_SCREEN if out is None or any(out is lost for lost in _lost) else out


_open: dict[str, Any] = {"line": None, "notes": 0}  # the stdout whose last line is unfinished; notes written


def _write(out: Any, text: str) -> None:
    """Write and flush; a screen that fails (the reader of a pipe went away) is dropped, the run goes on."""
    try:
        out.write(text)
        out.flush()
    except (OSError, ValueError) as exc:  # BrokenPipeError, EIO, or a closed file
        _lose(out, exc)
    else:
        if text and out is sys.stdout:
            _open["line"] = None if text.endswith(("\n", "\r\x1b[2K")) else out  # ends a line, or blanks it


def _lose(out: Any, exc: BaseException) -> None:
    _lost.append(out)
    if isinstance(exc, BrokenPipeError):
        # what is still buffered would fail again at exit ("Exception ignored ... BrokenPipeError"):
        # point the descriptor at /dev/null instead
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, out.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def screen_gone() -> bool:
    """Whether stdout failed (its reader went away: ``colabkit watch | head``) and output goes nowhere now."""
    return _out() is _NULL_SCREEN


def show(obj: Any) -> None:
    """Show an object: its rich HTML in a notebook, its ``str()`` elsewhere."""
    if _runtime.display_mode() == "notebook":
        try:
            from IPython.display import display
        except ImportError:  # a notebook without IPython cannot happen; degrade to text
            pass
        else:
            display(obj)
            return
    note(str(obj))


def show_image(path: Any) -> None:
    """Show a PNG in a notebook; elsewhere nothing (the file is on disk)."""
    if _runtime.display_mode() != "notebook":
        return
    try:
        from IPython.display import Image, display
    except ImportError:
        return
    display(Image(filename=str(path)))


def note(text: str) -> None:
    """One line for the user (stdout, so a notebook shows it without the red stderr block), on a line of its own
    even when the script's output left its last line unfinished (a progress bar)."""
    _open["notes"] += 1
    out = _out()
    _write(out, ("\n" if _open["line"] is out else "") + text + "\n")


_said: set[str] = set()  # facts this process told the user already (``said``, ``note_once``)


def said(fact: str) -> None:
    """Remember that the user was told ``fact`` (in a note or a warning): ``note_once`` does not repeat it."""
    _said.add(fact)


def note_once(fact: str, text: str) -> None:
    """``note(text)``, unless this process already told the user ``fact``."""
    if fact not in _said:
        _said.add(fact)
        note(text)


def frame(text: str, *, first: bool) -> None:
    """One frame of a live view (``colabkit watch``): redrawn in place on a terminal, appended otherwise."""
    if _runtime.display_mode() == "terminal":
        _write(_out(), ("" if first else "\x1b[H\x1b[J") + text + "\n")
    else:
        _write(_out(), text + "\n\n")


class StatusLine:
    """The one status line of a run, redrawn in place (not more than ``REFRESH_S`` apart, by the caller)."""

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode or _runtime.display_mode()
        self._handle: Any = None
        self._last_plain: float | None = None
        self.text = ""

    def update(self, text: str, now: float) -> None:
        self.text = text
        if self.mode == "notebook":
            self._notebook(text)
        elif self.mode == "plain" and self._last_plain is None:
            self._last_plain = (
                now  # a pipe gets its first status line after PLAIN_STATUS_S, then the final one
            )
        elif self.mode == "plain" and now - self._last_plain >= PLAIN_STATUS_S:
            self._last_plain = now
            note(f"[colabkit] {text}")

    def _notebook(self, text: str) -> None:
        data = {"text/plain": text, "text/html": f"<pre style='margin:0'>{html.escape(text)}</pre>"}
        try:
            from IPython.display import display
        except ImportError:  # a notebook without IPython cannot happen; degrade to lines
            self.mode = "plain"
            return
        if self._handle is None:
            self._handle = display(data, raw=True, display_id=True)
        else:
            self._handle.update(data, raw=True)

    def close(self, text: str | None = None) -> None:
        """Show the final state (it stays on screen); a pipe gets none, the run's summary follows there."""
        if text is not None:
            self.text = text
        if self.mode == "notebook" and self.text:
            self._notebook(self.text)
        elif self.mode == "terminal" and self.text:
            note(f"[colabkit] {self.text}")


class Chart:
    """A chart in a notebook cell, redrawn in place through one display handle (an SVG); nothing elsewhere.

    The caller redraws it from the cell's own thread: Colab does not render updates from other threads.
    """

    def __init__(self, mode: str | None = None, label: str = "chart") -> None:
        self.mode = mode or _runtime.display_mode()
        self.label = label
        self._handle: Any = None

    def update(self, svg: str) -> None:
        if self.mode != "notebook":
            return
        try:
            from IPython.display import display
        except ImportError:  # a notebook without IPython cannot happen; show nothing
            self.mode = "plain"
            return
        data = {"image/svg+xml": svg, "text/plain": f"<{self.label}>"}
        if self._handle is None:
            self._handle = display(data, raw=True, display_id=True)
        else:
            self._handle.update(data, raw=True)


def _with_status(row: str, status: str, width: int) -> str:
    """The bottom row with the status after it, as much of the status as fits in whole parts (``a · b · c``)."""
    room = width - _screen.visible_len(row) - (4 if row else 0)  # "  [" and "]"
    parts = status.split(" · ")
    while parts and len(" · ".join(parts)) > room:
        parts.pop()  # never cut mid-word: the parts that do not fit are left out
    if not parts:
        return row
    return f"{row}  [{' · '.join(parts)}]" if row else " · ".join(parts)


class _Pane:
    """One output of a notebook cell updated in place (a display handle): lines that left a multi-row
    progress area, and the area itself while it lasts."""

    def __init__(self, display: Callable[..., Any]) -> None:
        self._display = display
        self._handle: Any = None
        self.lines: list[str] = []
        self._shown: str | None = None

    def show(self, rows: list[str]) -> None:
        text = "\n".join(line.rstrip(" ") for line in self.lines + rows)  # tqdm pads with spaces
        if text == self._shown:
            return
        data = {"text/plain": text}
        if self._handle is None:
            self._handle = self._display(data, raw=True, display_id=True)
        else:
            self._handle.update(data, raw=True)
        self._shown = text


def _ipython_display(data: Any, **kwargs: Any) -> Any:
    from IPython.display import display

    return display(data, **kwargs)


class OutputView:
    """The child's merged stdout/stderr on screen: progress bars kept in place, output throttled.

    ``feed()`` takes text as it arrives (cheap: no screen writes) into a :class:`~colabkit._screen.Screen`;
    ``render()`` draws what changed, at most ``max_lines_per_s`` finished lines a second, and says how many
    lines it left to ``log_name`` (or, once that cannot be written, to memory: ``unwritable`` says why).
    A progress line redrawn with ``\\r`` stays one line everywhere; a line that only grows is sent once,
    piece by piece. Rows redrawn in place (a bar with ``\\r``, nested tqdm bars with cursor movements) are
    redrawn in place on a terminal, and in a notebook become one output updated in place (``display``, by
    default IPython's), with the lines printed meanwhile in it, in order, so that a saved notebook holds each
    line once; a pipe gets them now and then. In terminal mode the bottom row also carries the status line,
    as many of its parts as fit the width (colour escapes not counted).
    """

    def __init__(
        self,
        mode: str | None = None,
        *,
        out: TextIO | None = None,
        refresh_s: float = REFRESH_S,
        max_lines_per_s: int = MAX_LINES_PER_S,
        log_name: str = "output.log",
        display: Callable[..., Any] | None = None,
    ) -> None:
        self.mode = mode or _runtime.display_mode()
        self.out = out
        self.refresh_s = refresh_s
        self.log_name = log_name
        self.budget = max(1, int(max_lines_per_s * refresh_s))
        self._screen = _screen.Screen(keep=self.budget)
        self._display = display or _ipython_display
        self._pane: _Pane | None = None
        self._shown = ""  # the bottom line as a notebook or terminal shows it now
        self._drawn = 0  # rows drawn at the bottom of a terminal
        self._notes = _open["notes"]  # a note written since the last render ended the rows drawn: start below it
        self._plain_shown = ""  # the progress text a pipe last got, not repeated when it ends
        self._last_render = -1e18
        self._last_progress: float | None = None  # a pipe gets a progress line PLAIN_PROGRESS_S after the first render
        self.status = ""
        self.unwritable: str | None = None  # why ``log_name`` cannot be written, while it cannot
        self.hidden = 0  # lines not shown on screen, in total

    def feed(self, text: str, stream: str = "stdout") -> None:
        """Take child output (any mix of text, ``\\n``, ``\\r`` and terminal escapes); ``stream`` is not used."""
        self._screen.feed(text)

    def due(self, now: float) -> bool:
        return now - self._last_render >= self.refresh_s

    def _finished_lines(self, final: bool) -> list[str]:
        lines, count = self._screen.take(final=final)
        hidden = count - len(lines)
        self.hidden += hidden
        if hidden:  # between the burst's head and its tail
            if self.unwritable is None:
                lines.insert(self._screen.gap, f"... {hidden} lines not shown, see {self.log_name}")
            else:
                lines.insert(
                    self._screen.gap,
                    f"... {hidden} lines not shown; {self.log_name} cannot be written ({self.unwritable}): "
                    "they are kept in memory",
                )
        return lines

    def render(self, now: float, *, final: bool = False) -> None:
        """Draw what changed since the last render."""
        self._last_render = now
        out = _out() if self.out is None or any(self.out is lost for lost in _lost) else self.out
        lines = self._finished_lines(final)
        rows = self._screen.rows
        if final:
            rows = list(rows)
            while rows and not rows[-1].strip():
                rows.pop()
        if self.mode == "plain":
            text = self._plain(lines, rows, now, final)
        elif self.mode == "terminal":
            text = self._terminal(lines, rows, final)
        elif self._pane is not None or self._screen.redrawn:
            # a row redrawn in place goes into an output updated in place, not into the stream with \r: a saved
            # notebook read outside a live front end (which shows every \r state) then holds each line once
            text = self._notebook_pane(lines, rows, out)
        elif self._screen.holding and not lines:
            text = ""  # the row may become part of nested bars at once: not into the stream yet
        else:
            text = self._notebook(lines, rows[0] if rows else "", final)
        if self.mode != "plain":
            self._screen.dirty = False  # a pipe keeps it until it shows the progress
        if text:
            _write(out, text)

    def _plain(self, lines: list[str], rows: list[str], now: float, final: bool) -> str:
        if lines and self._plain_shown and lines[0] == self._plain_shown:
            lines = lines[1:]  # the progress line it got last, now finished as it was
        if lines:
            self._plain_shown = ""
        progress = [r for r in rows if r.strip()]
        if self._last_progress is None:
            self._last_progress = now
        if progress and self._screen.dirty and (final or now - self._last_progress >= PLAIN_PROGRESS_S):
            lines = lines + progress
            self._plain_shown = progress[-1]
            self._last_progress = now
            self._screen.dirty = False
        return "\n".join(lines) + "\n" if lines else ""

    def _terminal(self, lines: list[str], rows: list[str], final: bool) -> str:
        rows = list(rows) or [""]
        width = shutil.get_terminal_size((120, 24)).columns - 1
        if self._notes != _open["notes"]:  # a note went below the rows drawn: they stay above it as they are
            self._notes, self._drawn = _open["notes"], 0
        if self.status and not final:
            status = self.status.replace("\n", " │ ")  # one line per GPU elsewhere; one row at a terminal's bottom
            rows[-1] = _with_status(rows[-1], status, width)
        if not lines and not self._screen.dirty and not self.status and not final:
            return ""
        rows = [_screen.cut(r, width) for r in rows]  # a row that wrapped would break the cursor arithmetic
        chunks = []
        if self._drawn:
            chunks.append("\r" + (f"\x1b[{self._drawn - 1}A" if self._drawn > 1 else ""))
        chunks.extend(f"\x1b[2K{line}\n" for line in lines)
        chunks.append("\n".join(f"\x1b[2K{r}" for r in rows))
        if self._drawn > len(rows):
            chunks.append("\x1b[J")  # the rows drawn last time below these
        self._drawn = len(rows)
        if final:
            chunks.append("\n" if any(rows) else "\r\x1b[2K")
            self._drawn = 0
        return "".join(chunks)

    def _notebook(self, lines: list[str], bottom: str, final: bool) -> str:
        if self._notes != _open["notes"]:  # a note ended the row shown: the next one starts on a line of its own
            self._notes, ended, self._shown = _open["notes"], self._shown, ""
            if lines and ended and lines[0] == ended:
                lines.pop(0)  # that row, finished as it was shown: on screen already, above the note
        if not lines and not self._screen.dirty and not final:
            return ""
        shown, self._shown = self._shown, bottom
        chunks = []
        if lines:
            first = lines[0]
            if shown and first.startswith(shown):  # the line on screen, finished: only its end is new
                lines[0] = first[len(shown) :]
            elif shown:  # Jupyter writes after \r over what is there: pad what would leave a rest behind
                lines[0] = "\r" + first + " " * max(0, _screen.visible_len(shown) - _screen.visible_len(first))
            chunks.append("\n".join(lines) + "\n")
            chunks.append(bottom)
        elif bottom.startswith(shown):  # the line only grew: send what is new
            chunks.append(bottom[len(shown) :])
        else:
            chunks.append("\r" + bottom + " " * max(0, _screen.visible_len(shown) - _screen.visible_len(bottom)))
        if final and bottom:
            chunks.append("\n")
            self._shown = ""
        return "".join(chunks)

    def _notebook_pane(self, lines: list[str], rows: list[str], out: Any) -> str:
        if self._pane is None:  # the script began to redraw rows above its last: they go in a pane from here
            text = "\n".join(lines) + "\n" if lines else ""
            if self._shown:  # the row in the stream is now the pane's: blank it
                text = "\r" + " " * _screen.visible_len(self._shown) + "\r" + text
                self._shown = ""
            if text:  # before the pane, so that it shows below
                _write(out, text)
            lines = []
            self._pane = _Pane(self._display)
        pane = self._pane
        pane.lines.extend(lines)
        if len(pane.lines) >= PANE_LINES:  # keep each update small: the finished lines stay in this output
            pane.show([])
            self._pane = pane = _Pane(self._display)
        pane.show(list(rows))
        return ""
