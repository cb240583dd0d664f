"""A run's output: the reader thread, ``output.log``, the screen and the last lines, and moving bytes between them.

The script's stdout and stderr share one pipe, so their order is the order it wrote them in (as
``python SCRIPT 2>&1`` shows it); one reader thread gathers the bytes in a buffer and ``Output.pump()``,
called by the run's loop on the caller's thread (a notebook cell's own thread, the only one Colab
renders from), moves them to the log (byte for byte: bytes that are not UTF-8 stay as they are), and,
decoded, to the screen and the tail. When the log cannot be written (a full disk, a Drive that died,
a deleted run folder) the output is kept in memory, up to :data:`KEEP_MAX`, written when the folder
can be written again, and said precisely. This module knows nothing of timeouts, budgets or signals.
"""

from __future__ import annotations

import codecs
import collections
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

from . import _disk, _display, _format

__all__ = ["KEEP_MAX", "LOG_FLUSH_S", "Log", "Output", "unwritable"]

LOG_FLUSH_S = 1.0  # how often output.log's link is checked and a failed log retried
KEEP_MAX = 64 * 1024**2  # output that could not be written is kept in memory up to this many bytes
_BUFFER_MAX = 1024**2  # bytes gathered before a write to the log, whatever the clock says
_TAKE_MAX = 4 * 1024**2  # bytes handled between two looks at the clock
_HELD_MAX = 65536  # a line without an end is written to the log once it is this long


def unwritable(what: str, exc: OSError, folder: Path, goes_on: str, *, later: str = "") -> _disk.Problem:
    """Say once that ``what`` cannot be written any more, why, what goes on without it and the fix.

    ``later`` is added when writing may work again (a full disk, a dead Drive): what happens then.
    """
    found = _disk.problem(exc, folder)
    again = f" {later}" if later and found.recoverable else ""
    _display.note(f"colabkit: cannot write {what}: {found.what}; {goes_on}{again}. {found.fix}")
    return found


class _Inbox:
    """What the reader thread read and the loop has not taken yet: one buffer under a lock, so a pipe that
    delivers a line at a time costs the loop one take per turn, not one per line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._data = bytearray()
        self.ends = 0  # readers that reached their pipe's end

    def put(self, data: bytes | None) -> None:
        with self._lock:
            if data is None:
                self.ends += 1
            else:
                self._data += data
            self._ready.set()

    def take(self, wait_s: float, most: int) -> bytes:
        """Up to ``most`` bytes, waiting up to ``wait_s`` for the first."""
        if wait_s > 0:
            self._ready.wait(wait_s)
        with self._lock:
            data = bytes(self._data[:most])
            del self._data[:most]
            if not self._data:
                self._ready.clear()
        return data


def _read(fd: int, inbox: _Inbox) -> None:
    """Put what the pipe ``fd`` gives in ``inbox``, then its end."""
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            inbox.put(data)
    except OSError:
        pass
    finally:
        inbox.put(None)


class Log:
    """output.log: everything the child wrote, byte for byte and in order, and colabkit's own lines between.

    The child's unfinished line is held back until it ends, so a ``[colabkit]`` line never lands inside a
    progress bar. When a write fails the bytes go to ``kept`` (memory, up to ``KEEP_MAX``; ``dropped``
    counts the rest) and ``problem`` says why; a full disk or a dead Drive is tried again every
    ``LOG_FLUSH_S`` and, once it works, what was kept is written where it belongs. A deleted run folder is
    noticed too (the file's link count drops to 0): its last second of output is read back and kept.

    Raises:
        OSError: ``path`` cannot be created.
    """

    def __init__(self, path: Path, *, keep_max: int = KEEP_MAX) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        self._pending = bytearray()
        self._held = b""
        self._keep_max = keep_max
        self.written = 0  # bytes in the file
        self._checked = 0  # bytes in the file when its link was last seen
        self.kept = bytearray()  # bytes that could not be written, from ``failed_at`` on
        self.dropped = 0  # bytes beyond ``keep_max``: lost
        self.problem: _disk.Problem | None = None
        self.failed_at: float | None = None  # time.time() of the first failure not yet recovered
        self._next_try = 0.0
        self.closed = False

    # -- writing ---------------------------------------------------------------------------------------
    def write(self, data: bytes, *, own: bool = False) -> None:
        """Add the child's bytes (``own=False``) or a line of colabkit's own."""
        if own:
            self._add(data)
            return
        data = self._held + data
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if len(data) - cut > _HELD_MAX:  # a very long line without an end: do not hold it forever
            cut = len(data)
        self._held = data[cut:]
        if cut:
            self._add(data[:cut])

    def _add(self, data: bytes) -> None:
        if self.problem is not None:
            self._keep(data)
            return
        self._pending += data
        if len(self._pending) >= _BUFFER_MAX:
            self.write_out()

    def _keep(self, data: bytes | bytearray) -> None:
        room = self._keep_max - len(self.kept)
        if room >= len(data):
            self.kept += data
        else:
            self.kept += data[: max(0, room)]
            self.dropped += len(data) - max(0, room)

    def _put(self, data: bytes | bytearray) -> int:
        """Write ``data`` at the end of the file; how much got there before an error (re-raised with ``.written``)."""
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            exc.written = done  # type: ignore[attr-defined]
            raise
        finally:
            self.written += done
        return done

    def write_out(self) -> None:
        """Write what was gathered (the run's loop does it every turn, so a launcher killed loses one turn at most)."""
        if self._pending and self.problem is None:
            data, self._pending = self._pending, bytearray()
            try:
                self._put(data)
            except OSError as exc:
                self._fail(exc, data[getattr(exc, "written", 0) :])

    def flush(self, now: float | None = None) -> None:
        """Write what was gathered; check the file is still linked; retry a failed log when it is time."""
        now = time.monotonic() if now is None else now
        if self.problem is not None:
            if self.problem.recoverable and now >= self._next_try:
                self._next_try = now + LOG_FLUSH_S
                self._retry()
            return
        self.write_out()
        if self.problem is None:
            self._check_link()

    def _check_link(self) -> None:
        try:
            linked = os.fstat(self._fd).st_nlink > 0
        except OSError as exc:
            self._fail(exc, b"")
            return
        if linked:
            self._checked = self.written
            return
        # the run folder (or the log) was deleted: what went to the file since the last look is lost with it
        try:
            lost = os.pread(self._fd, self.written - self._checked, self._checked)
        except OSError:
            lost = b""
        self.written = self._checked
        self._fail(OSError(errno.ENOENT, "No such file or directory", str(self.path)), lost)

    def _fail(self, exc: OSError, unwritten: bytes | bytearray) -> None:
        self.failed_at = time.time()
        self._keep(unwritten)
        self._keep(self._pending)
        self._pending = bytearray()
        self._next_try = time.monotonic() + LOG_FLUSH_S
        self.problem = unwritable(
            self.path.name,
            exc,
            self.path.parent,
            f"output goes on on screen and is kept in memory (up to {_format.format_bytes(self._keep_max)}; "
            "at the end, in a file on this machine's own disk if the log still cannot be written)",
            later="and is written to the log as soon as the folder can be written again",
        )

    def _retry(self) -> None:
        assert self.problem is not None
        if self.problem.kind == "dead":  # a remounted Drive: the old descriptor stays dead, the path may work
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except OSError:
                return
            os.close(self._fd)
            self._fd = fd
        data, self.kept = self.kept, bytearray()
        try:
            self._put(data)
        except OSError as exc:
            self.kept = bytearray(data[getattr(exc, "written", 0) :]) + self.kept
            return
        dropped, self.dropped = self.dropped, 0
        self.problem = self.failed_at = None
        self._checked = self.written
        if dropped:
            self._add(
                f"\n[colabkit] {dropped} bytes of output are missing here: more than "
                f"{_format.format_bytes(self._keep_max)} could not be written\n".encode()
            )
        _display.note(f"colabkit: {self.path.name} can be written again: the output kept in memory is in it")

    def close(self, trailer: str = "") -> None:
        """Write what is held and ``trailer``; try a failed log one last time; close the file (once)."""
        if self.closed:
            return
        self.closed = True
        if self._held:
            self._add(self._held)
            self._held = b""
        if trailer:
            self._add(trailer.encode())
        if self.problem is not None:
            self._next_try = 0.0
        self.flush(time.monotonic())
        if self.problem is None and self._pending:
            self.flush()
        try:
            os.close(self._fd)
        except OSError as exc:  # a FUSE file system reports a failed flush at close
            if self.problem is None:
                self._fail(exc, b"")

    def unsaved(self) -> bytes:
        """The output that could not be written (empty when the log is complete)."""
        return bytes(self.kept)


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
        for line in pieces[-(self._lines.maxlen or 0) :]:  # the older ones would only be pushed out again
            self._lines.append(line.rsplit("\r", 1)[-1] if line.rstrip("\r") else line)

    def lines(self) -> tuple[str, ...]:
        lines = list(self._lines)
        if self._partial.strip():
            lines.append(self._partial.rsplit("\r", 1)[-1])
        return tuple(lines)


class Output:
    """The child's output on its way to ``output.log``, the screen (an ``OutputView``) and the tail.

    ``masker`` (secrets: a byte masker with ``feed``/``flush``, ``_secrets.Masker``) sees every byte first,
    so no secret value reaches the log, the screen, the tail or an error; ``taps`` get the decoded, masked
    text too (whose line is whose in a torchrun run).
    """

    def __init__(
        self, log: Log, view: _display.OutputView, *, masker: Any = None, taps: tuple[Any, ...] = ()
    ) -> None:
        self.log = log
        self.view = view
        self._masker = masker
        self._taps = taps
        self._tail = _Tail()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._inbox = _Inbox()
        self._readers: list[threading.Thread] = []
        self._last_flush = float("-inf")
        self._ended_text = False

    @property
    def seen(self) -> str:
        """The last few KB of output (what a test or a hook waits for)."""
        return self._tail.seen

    def tail(self) -> tuple[str, ...]:
        """The last lines of the child's output (stdout and stderr together), a progress bar's last state each."""
        return self._tail.lines()

    def start(self, fd: int) -> None:
        """Read the pipe ``fd`` (the child's stdout and stderr together) on a daemon thread."""
        thread = threading.Thread(target=_read, args=(fd, self._inbox), name="colabkit-reader", daemon=True)
        thread.start()
        self._readers.append(thread)

    @property
    def reading(self) -> bool:
        """Whether a reader thread is still blocked on the pipe."""
        return any(thread.is_alive() for thread in self._readers)

    @property
    def ended(self) -> bool:
        """Whether every pipe reached its end (nothing left in the child's tree holds it)."""
        return self._inbox.ends >= len(self._readers)

    def _take(self, data: bytes) -> None:
        if self._masker is not None:
            data = self._masker.feed(data)
        self.log.write(data)
        self._text(self._decoder.decode(data))

    def _text(self, text: str) -> None:
        if text:
            self.view.feed(text)
            self._tail.add(text)
            for tap in self._taps:
                tap(text)

    def pump(self, wait_s: float, now: float) -> None:
        """Move what arrived (waiting up to ``wait_s`` for it) to the log, the screen and the tail."""
        ended = self.ended  # before the take: what was read before the end is in it
        data = self._inbox.take(wait_s, _TAKE_MAX)
        if data:
            self._take(data)
        if ended and not self._ended_text:
            self._end_text()
        if now - self._last_flush >= LOG_FLUSH_S:
            self.log.flush(now)
            self._last_flush = now
        elif data:
            self.log.write_out()
        problem = self.log.problem
        self.view.unwritable = problem.what if problem is not None else None

    def _end_text(self) -> None:
        self._ended_text = True
        if self._masker is not None:  # what was held back in case a value went on: none did
            held = self._masker.flush()
            self.log.write(held)
            self._text(self._decoder.decode(held))
        self._text(self._decoder.decode(b"", final=True))

    def say(self, message: str) -> None:
        """A line from colabkit, to the log and the screen."""
        self.log.write(f"\n[colabkit] {message}\n".encode(), own=True)
        _display.note(f"colabkit: {message}")

    def finish(self, join_s: float) -> None:
        """After the child's processes are gone: let the readers end and take what they read."""
        for thread in self._readers:
            thread.join(timeout=join_s)
        while True:  # a reader only outlives its join if something outside the tree holds the pipe
            data = self._inbox.take(0, _TAKE_MAX)
            if not data:
                break
            self._take(data)
        if not self._ended_text:
            self._end_text()
