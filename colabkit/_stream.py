"""A run's output: the reader thread, ``output.log``, the screen and the last lines, and moving text between them.

The child's stdout and stderr share one pipe, so their order is the order the child wrote them in (as
``python SCRIPT 2>&1`` shows it); one reader thread puts the text on a queue and ``Output.pump()``,
called by the run's loop on the caller's thread (a notebook cell's own thread, the only one Colab
renders from), moves it to the log, the screen and the tail. This module knows nothing of timeouts,
budgets or signals: that is the run's policy, in ``_run``.
"""

from __future__ import annotations

import codecs
import collections
import os
import queue
import threading
from pathlib import Path
from typing import Any

from . import _display

__all__ = ["LOG_FLUSH_S", "Log", "Output", "drive_lost"]

LOG_FLUSH_S = 1.0  # a disconnect loses at most this much of output.log
_DRAIN_MAX = 256  # queue items handled between two looks at the clock
_HELD_MAX = 65536  # a line without an end is written to the log once it is this long


def drive_lost(what: str, exc: OSError, goes_on: str) -> None:
    """Say once that a file on Drive cannot be written any more, and what goes on without it."""
    _display.note(
        f"colabkit: cannot write {what} on Drive any more: {exc}; {goes_on} continues here, "
        "remount with colabkit.mount(force=True)"
    )


def _read(stream: Any, name: str, q: queue.Queue[tuple[str, str | None]]) -> None:
    """Put a pipe's text on ``q`` as ``(name, text)``, decoded as UTF-8, then ``(name, None)`` at its end."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = stream.fileno()
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            text = decoder.decode(data)
            if text:
                q.put((name, text))
        rest = decoder.decode(b"", final=True)
        if rest:
            q.put((name, rest))
    except OSError:
        pass
    finally:
        q.put((name, None))


class Log:
    """output.log: everything the child wrote, in order, and colabkit's own lines between them.

    The child's unfinished line is held back until it ends, so a ``[colabkit]`` line never lands
    inside a progress bar. A write that fails (Drive disconnected: ENOTCONN) is said once; the run goes on without the log.
    """

    def __init__(self, path: Path) -> None:
        self._fh: Any = open(path, "w", encoding="utf-8", errors="replace", newline="")  # noqa: SIM115 - closed in close()
        self._held: dict[str, str] = {}
        self.error: OSError | None = None

    def _call(self, method: str, *args: str) -> None:
        if self._fh is None:
            return
        try:
            getattr(self._fh, method)(*args)
        except OSError as exc:
            self.error, fh, self._fh = exc, self._fh, None
            try:
                fh.close()
            except OSError:
                pass
            drive_lost("the log", exc, "output")

    def write(self, text: str, stream: str = "stdout") -> None:
        text = self._held.pop(stream, "") + text
        cut = max(text.rfind("\n"), text.rfind("\r")) + 1
        if len(text) - cut > _HELD_MAX:  # a very long line without an end: do not hold it forever
            cut = len(text)
        if cut:
            self._call("write", text[:cut])
        if cut < len(text):
            self._held[stream] = text[cut:]

    def flush(self) -> None:
        self._call("flush")

    def close(self, trailer: str = "") -> None:
        for held in self._held.values():
            self._call("write", held)
        self._held.clear()
        if trailer:
            self._call("write", trailer)
        self._call("close")
        self._fh = None


class _Tail:
    """The last lines of the output, a progress bar's last state each (for ``RunFailed`` and the OOM check)."""

    def __init__(self, lines: int = 200) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._partial = ""
        self.seen = ""  # the last few KB of output as written

    def add(self, text: str) -> None:
        self.seen = (self.seen + text)[-4096:]
        pieces = (self._partial + text).split("\n")
        self._partial = pieces.pop()[-4096:]
        for line in pieces:
            self._lines.append(line.rsplit("\r", 1)[-1] if line.rstrip("\r") else line)

    def lines(self) -> tuple[str, ...]:
        lines = list(self._lines)
        if self._partial.strip():
            lines.append(self._partial.rsplit("\r", 1)[-1])
        return tuple(lines)


class Output:
    """The child's output on its way to ``output.log``, the screen (an ``OutputView``) and the tail."""

    def __init__(self, log: Log, view: _display.OutputView) -> None:
        self.log = log
        self.view = view
        self._tail = _Tail()
        self._queue: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._eof = 0
        self._last_flush = float("-inf")

    @property
    def seen(self) -> str:
        """The last few KB of output (what a test or a hook waits for)."""
        return self._tail.seen

    def tail(self) -> tuple[str, ...]:
        """The last lines of the child's output (stdout and stderr together), a progress bar's last state each."""
        return self._tail.lines()

    def start(self, pipe: Any) -> None:
        """Read ``pipe`` (the child's stdout and stderr together) on a daemon thread."""
        thread = threading.Thread(target=_read, args=(pipe, "output", self._queue), name="colabkit-reader", daemon=True)
        thread.start()
        self._readers.append(thread)

    @property
    def ended(self) -> bool:
        """Whether every pipe reached its end (nothing left in the child's tree holds it)."""
        return self._eof >= len(self._readers)

    def _take(self, name: str, text: str) -> None:
        self.log.write(text, name)
        self.view.feed(text, name)
        self._tail.add(text)

    def pump(self, wait_s: float, now: float) -> None:
        """Move what arrived (waiting up to ``wait_s`` for the first piece) to the log, the screen and the tail."""
        try:
            item: tuple[str, str | None] | None = self._queue.get(timeout=wait_s)
        except queue.Empty:
            item = None
        n = 0
        while item is not None:
            name, text = item
            if text is None:
                self._eof += 1
            else:
                self._take(name, text)
            n += 1
            if n >= _DRAIN_MAX:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        if now - self._last_flush >= LOG_FLUSH_S:
            self.log.flush()
            self._last_flush = now

    def say(self, message: str) -> None:
        """A line from colabkit, to the log and the screen."""
        self.log.write(f"\n[colabkit] {message}\n", "colabkit")
        _display.note(f"colabkit: {message}")

    def finish(self, join_s: float) -> None:
        """After the child's processes are gone: let the readers end, take what they read, close the pipes' reading side."""
        for thread in self._readers:
            thread.join(timeout=join_s)
        while True:  # a reader only outlives its join if something outside the tree holds the pipe
            try:
                name, text = self._queue.get_nowait()
            except queue.Empty:
                break
            if text:
                self._take(name, text)
