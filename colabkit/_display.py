"""Notebook vs terminal output: the status line, the throttled child output, notes and frames.

One formatter, three renderers (``runtime.display_mode()``): ``notebook`` updates one output in place
through an IPython display handle, ``terminal`` redraws a ``\\r`` line padded to its last length,
``plain`` (a pipe or a file) writes whole lines now and then.
"""

from __future__ import annotations

import collections
import html
import os
import shutil
import sys
from typing import Any, TextIO

from . import _format, _runtime

__all__ = [
    "OutputView",
    "StatusLine",
    "format_status",
    "note",
    "show",
    "show_image",
]

REFRESH_S = 0.25  # about four screen updates a second
MAX_LINES_PER_S = 100  # beyond this the screen shows a note and output.log keeps the rest
PLAIN_STATUS_S = 30.0  # how often a pipe gets a status line
PLAIN_PROGRESS_S = 10.0  # how often a pipe gets the latest state of a \r progress line

def html_pre(text: str) -> str:
    """Text as an escaped ``<pre>`` block for ``_repr_html_``."""
    return f"<pre>{html.escape(text)}</pre>"


def format_status(sample: Any, peak: int | None, elapsed_s: float) -> str:
    """The status line: GPU used/total, peak, utilisation, temperature, RAM of the child, time.

    Examples:
        >>> format_status(sample, peak, 75.0)
        'GPU0 3.2 GiB/15.0 GiB · peak 4.1 GiB · util 87% · 64°C · RAM 2.1 GiB · 1m15s'
    """
    parts = []
    if sample is None or not sample.used:
        parts.append("GPU n/a")
    else:
        for i, (used, total) in enumerate(zip(sample.used, sample.total, strict=False)):
            parts.append(f"GPU{i} {_format.format_bytes(used)}/{_format.format_bytes(total)}")
        parts.append(f"peak {_format.format_bytes(peak)}")
        parts.append("util " + "/".join(_format.na(u, "%") for u in sample.util))
        parts.append("/".join(_format.na(t, "°C") for t in sample.temp))
    if sample is not None and sample.child_rss_bytes is not None:
        parts.append(f"RAM {_format.format_bytes(sample.child_rss_bytes)}")
    parts.append(_format.format_duration(elapsed_s))
    return " · ".join(parts)


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


def _write(out: Any, text: str) -> None:
    """Write and flush; a screen that fails (the reader of a pipe went away) is dropped, the run goes on."""
    try:
        out.write(text)
        out.flush()
    except (OSError, ValueError) as exc:  # BrokenPipeError, EIO, or a closed file
        _lose(out, exc)


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
    """One line for the user (stdout, so a notebook shows it without the red stderr block)."""
    _write(_out(), text + "\n")


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


class OutputView:
    """The child's merged stdout/stderr on screen: ``\\r`` lines kept in place, output throttled.

    ``feed()`` takes text as it arrives (cheap: no screen writes); ``render()`` draws what changed,
    at most ``max_lines_per_s`` lines a second, and says how many lines it left to ``log_name``.
    In terminal mode the bottom line also carries the status line.
    """

    def __init__(
        self,
        mode: str | None = None,
        *,
        out: TextIO | None = None,
        refresh_s: float = REFRESH_S,
        max_lines_per_s: int = MAX_LINES_PER_S,
        log_name: str = "output.log",
    ) -> None:
        self.mode = mode or _runtime.display_mode()
        self.out = out
        self.refresh_s = refresh_s
        self.log_name = log_name
        self.budget = max(1, int(max_lines_per_s * refresh_s))
        self._lines: collections.deque[str] = collections.deque(maxlen=self.budget)
        self._fed = 0  # complete lines fed since the last render
        self._partials: dict[str, tuple[str, bool]] = {}  # stream -> (unfinished line, a \r came)
        self._bottom_stream = "stdout"
        self._partial_dirty = False
        self._plain_shown: dict[str, str] = {}  # the progress line a pipe last got, not repeated when it ends
        self._shown = 0  # length of the unterminated bottom line on screen
        self._last_render = -1e18
        self._last_progress = -1e18
        self.status = ""
        self.hidden = 0  # lines not shown on screen, in total

    def feed(self, text: str, stream: str = "stdout") -> None:
        """Take child output (any mix of partial lines, ``\\n`` and ``\\r``) from ``stream``.

        Each stream keeps its own unfinished line, so a line printed on stdout is never glued to a
        progress bar that stderr is still drawing.
        """
        partial, overwrite = self._partials.get(stream, ("", False))
        pieces = text.split("\n")
        for i, piece in enumerate(pieces):
            if i > 0:
                if self.mode != "plain" or partial != self._plain_shown.get(stream):
                    self._lines.append(partial)
                    self._fed += 1
                self._plain_shown.pop(stream, None)
                partial, overwrite = "", False
            if not piece:
                continue
            segments = piece.split("\r")
            for j, seg in enumerate(segments):
                if j > 0:
                    overwrite = True
                if seg:
                    partial = seg if overwrite else partial + seg
                    overwrite = False
            self._partial_dirty = True
            self._bottom_stream = stream
        self._partials[stream] = (partial, overwrite)

    @property
    def _partial(self) -> str:
        """The unfinished line shown at the bottom: the stream that wrote last, else the other."""
        own = self._partials.get(self._bottom_stream, ("", False))[0]
        if own:
            return own
        return next((p for p, _ in self._partials.values() if p), "")

    def due(self, now: float) -> bool:
        return now - self._last_render >= self.refresh_s

    def render(self, now: float, *, final: bool = False) -> None:
        """Draw what changed since the last render."""
        self._last_render = now
        out = _out() if self.out is None or any(self.out is lost for lost in _lost) else self.out
        lines = list(self._lines)
        hidden = self._fed - len(lines)
        self._lines.clear()
        self._fed = 0
        self.hidden += hidden
        chunks: list[str] = []
        if hidden:
            lines.insert(0, f"... {hidden} lines not shown, see {self.log_name}")
        if self.mode == "plain":
            partial = self._partial
            if partial and self._partial_dirty and (final or now - self._last_progress >= PLAIN_PROGRESS_S):
                lines.append(partial)
                self._plain_shown[self._bottom_stream] = partial
                self._last_progress = now
                self._partial_dirty = False
            if lines:
                chunks.append("\n".join(lines) + "\n")
        else:
            bottom = self._partial
            if self.mode == "terminal" and self.status:
                bottom = f"{bottom}  [{self.status}]" if bottom else self.status
                width = shutil.get_terminal_size((120, 24)).columns - 1
                bottom = bottom[:width]
            if not lines and not self._partial_dirty and not (self.mode == "terminal" and self.status):
                return
            clear = "\r\x1b[2K" if self.mode == "terminal" else "\r"  # Jupyter's \r already drops the line
            if self._shown:
                chunks.append(clear)
            if lines:
                chunks.append("\n".join(lines) + "\n")
            chunks.append(bottom)
            self._shown = len(bottom)
            self._partial_dirty = False
            if final and self._shown:
                chunks.append("\n")
                self._shown = 0
        if chunks:
            _write(out, "".join(chunks))
