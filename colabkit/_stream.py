"""A run's output: the reader thread, ``output.log``, the screen, and the loop that moves output between them.

The child's stdout and stderr share one pipe, so their order is the order the child wrote them in (as
``python SCRIPT 2>&1`` shows it); one reader thread puts the text on a queue. ``pump()`` runs on the calling
thread (a notebook cell's own thread, which is the only one Colab renders from), writes the log,
draws the throttled output and the status line, and on timeout, budget or KeyboardInterrupt ends
the run's processes step by step (``_group``'s SIGINT, SIGTERM, SIGKILL) while output keeps flowing.
"""

from __future__ import annotations

import codecs
import collections
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _group, display
from ._budget import fmt as _fmt

if TYPE_CHECKING:
    from .monitoring import Sampler
    from .runner import _Run

__all__ = [
    "LOG_FLUSH_S",
    "PIPE_GRACE_S",
    "Log",
    "Output",
    "close_pipes",
    "drain",
    "drive_lost",
    "join_readers",
    "pump",
    "reader",
    "say",
    "start_reader",
    "status_text",
]

PIPE_GRACE_S = 1.0  # after the child exits, how long its leftovers may keep the pipes open
LOG_FLUSH_S = 1.0  # a disconnect loses at most this much of output.log
_DRAIN_MAX = 256  # queue items handled between two screen checks

# Called by the run loop on every turn with the live _Run (tests raise KeyboardInterrupt from it).
_loop_hook: Callable[[Any], None] | None = None


# -- reading ---------------------------------------------------------------------------------------
def reader(stream: Any, name: str, q: queue.Queue[tuple[str, str | None]]) -> None:
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


def start_reader(proc: Any, q: queue.Queue[tuple[str, str | None]]) -> list[threading.Thread]:
    """The started daemon reader thread of the child's output pipe (stdout and stderr together), in a list."""
    thread = threading.Thread(
        target=reader, args=(proc.stdout, "output", q), name="colabkit-reader", daemon=True
    )
    thread.start()
    return [thread]


def join_readers(readers: list[threading.Thread]) -> None:
    for t in readers:
        t.join(timeout=_group.KILL_WAIT_S)


def drain(state: Output) -> None:
    """Take what is still on the queue (a reader can only outlive its join if something outside the group holds the pipe)."""
    while True:
        try:
            name, text = state.queue.get_nowait()
        except queue.Empty:
            break
        if text:
            state.take(name, text)


def close_pipes(proc: Any) -> None:
    for stream in (proc.stdout, proc.stderr):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


# -- the log ---------------------------------------------------------------------------------------
def drive_lost(what: str, exc: OSError, goes_on: str) -> None:
    """Say once that a file on Drive cannot be written any more, and what goes on without it."""
    display.note(
        f"colabkit: cannot write {what} on Drive any more: {exc}; {goes_on} continues here, "
        "remount with colabkit.mount(force=True)"
    )


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
        if len(text) - cut > 65536:  # a very long line without an end: do not hold it forever
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


class Output:
    """The output side of a run's live state: queue and reader, log, screen, and the output's last lines."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self.readers: list[threading.Thread] = []
        self.log: Log | None = None
        self.view: display.OutputView | None = None
        self.status: display.StatusLine | None = None
        self.seen = ""  # the last few KB of output, for hooks and tests
        self.tail_lines: collections.deque[str] = collections.deque(maxlen=200)
        self._tail_partial = ""
        self.csv_noted = False
        self.stopping: str | None = None  # "int" | "term" | "kill" once colabkit is ending the run
        self.stop_deadline: float | None = None  # seconds after the start when the next signal is due

    def note_tail(self, text: str) -> None:
        pieces = (self._tail_partial + text).split("\n")
        self._tail_partial = pieces.pop()[-4096:]
        for line in pieces:
            self.tail_lines.append(line.rsplit("\r", 1)[-1] if line.rstrip("\r") else line)

    def output_tail(self) -> tuple[str, ...]:
        """The last lines of the child's output (stdout and stderr together), a progress bar's last state each."""
        lines = list(self.tail_lines)
        if self._tail_partial.strip():
            lines.append(self._tail_partial.rsplit("\r", 1)[-1])
        return tuple(lines)

    def take(self, name: str, text: str) -> None:
        """One piece of the child's output: to the log, the screen and the output's last lines."""
        assert self.log is not None and self.view is not None
        self.log.write(text, name)
        self.view.feed(text, name)
        self.seen = (self.seen + text)[-4096:]
        self.note_tail(text)


# -- the screen and the loop -----------------------------------------------------------------------
def status_text(sampler: Sampler | None, elapsed: float, state: _Run | None = None) -> str:
    """The status line: GPU memory and time, and with a budget the time left or the SIGKILL countdown."""
    if sampler is None:
        text = display.format_duration(elapsed)
    else:
        text = display.format_status(sampler.latest, sampler.peak_used(), elapsed)
    plan = state.budget if state is not None else None
    if state is not None and state.reason in ("timeout", "interrupt") and state.stop_deadline is not None:
        sent, then = {"int": ("SIGINT", "SIGTERM"), "term": ("SIGTERM", "SIGKILL")}.get(
            state.stopping or "", ("SIGKILL", "")
        )
        left = display.format_duration(max(0.0, state.stop_deadline - elapsed))
        text += f" · {sent} sent, {then} in {left}" if then else f" · {sent} sent"
    elif plan is not None:
        if state is not None and state.term_sent is not None:
            text += f" · SIGTERM sent, SIGKILL in {display.format_duration(max(0.0, plan.kill_at - elapsed))}"
        else:
            text += f" · {display.format_duration(max(0.0, plan.kill_at - elapsed))} left"
    return text


def say(state: _Run, message: str) -> None:
    """A line from colabkit, to the log and the screen."""
    assert state.log is not None
    state.log.write(f"\n[colabkit] {message}\n", "colabkit")
    display.note(f"colabkit: {message}")


def pump(state: _Run) -> None:
    """Move output from the queue to the log and the screen until the child and its pipes are done.

    Ends the child's processes on timeout, budget or KeyboardInterrupt (SIGINT, SIGTERM, SIGKILL) and
    the leftovers of a script that exited; returns once none is left.
    """
    proc, tree, sampler, view, status = state.proc, state.tree, state.sampler, state.view, state.status
    assert tree is not None and view is not None and status is not None and state.log is not None
    started = state.started
    eof = 0
    last_flush = started
    exited_at: float | None = None
    stopping: str | None = None  # None | "int" | "term" | "kill"
    deadline = 0.0

    def begin(how: str, sig: int, until: float) -> None:
        nonlocal stopping, deadline
        if stopping is None:
            tree.walk()  # a last look for descendants that left the group
        stopping, deadline = how, until
        state.stopping, state.stop_deadline = how, until - started
        tree.signal(sig)

    while True:
        try:
            try:
                item: tuple[str, str | None] | None = state.queue.get(timeout=0.05)
            except queue.Empty:
                item = None
            n = 0
            while item is not None:
                name, text = item
                if text is None:
                    eof += 1
                else:
                    state.take(name, text)
                n += 1
                if n >= _DRAIN_MAX:
                    break
                try:
                    item = state.queue.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            if _loop_hook is not None:
                _loop_hook(state)
            if now - last_flush >= LOG_FLUSH_S:
                state.log.flush()
                last_flush = now
            if sampler is not None and sampler.csv_error is not None and not state.csv_noted:
                state.csv_noted = True
                drive_lost("metrics.csv", sampler.csv_error, "the monitor")
            if view.due(now):
                text = status_text(sampler, now - started, state)
                view.status = text
                if status.mode != "terminal":
                    status.update(text, now)
                view.render(now)
            if proc.poll() is not None and exited_at is None:
                exited_at = now
            elif exited_at is None:
                tree.walk(now)
            if state.timeout is not None and stopping is None and now - started >= state.timeout:
                state.reason = "timeout"
                begin("int", signal.SIGINT, now + _group.INT_GRACE_S)
                say(
                    state,
                    f"timeout of {_fmt(state.timeout)} reached: sent SIGINT; SIGTERM in {_fmt(_group.INT_GRACE_S)}, "
                    f"then SIGKILL {_fmt(_group.TERM_GRACE_S)} later unless the script exits",
                )
            plan = state.budget
            if plan is not None and stopping is None and exited_at is None and now - started >= plan.term_at:
                state.reason = "budget"
                state.term_sent = now - started
                begin("term", signal.SIGTERM, started + plan.kill_at)
                say(
                    state,
                    f"budget of {_fmt(plan.budget)}: sent SIGTERM after {display.format_duration(now - started)}; "
                    f"SIGKILL in {_fmt(round(plan.kill_at - (now - started), 1))} unless the script exits",
                )
            if stopping is not None:
                if not tree.members() and proc.poll() is not None:
                    if eof >= len(state.readers) or now - (exited_at or now) >= PIPE_GRACE_S:
                        return
                elif now >= deadline:
                    if stopping == "int":
                        begin("term", signal.SIGTERM, now + _group.TERM_GRACE_S)
                    elif stopping == "term":
                        begin("kill", signal.SIGKILL, now + _group.KILL_WAIT_S)
                        if state.reason == "budget" and state.budget is not None:
                            say(state, f"budget of {_fmt(state.budget.budget)} is over: sent SIGKILL")
                    else:
                        display.note(f"colabkit: processes of the run survive SIGKILL: {tree.members()}")
                        return
                continue
            if exited_at is not None:
                leftovers = tree.members()
                if eof >= len(state.readers) and not leftovers:
                    return
                if now - exited_at >= PIPE_GRACE_S and leftovers:
                    # the script is done but left processes behind (workers, a server): end them, they may hold the GPU
                    state.log.write(
                        f"\n[colabkit] ending {len(leftovers)} leftover process(es) of the run: {leftovers}\n",
                        "colabkit",
                    )
                    begin("term", signal.SIGTERM, now + _group.TERM_GRACE_S)
                elif now - exited_at >= PIPE_GRACE_S + _group.KILL_WAIT_S:
                    return  # the pipes are held outside the group; the readers are daemon threads
        except KeyboardInterrupt:
            now = time.monotonic()
            if stopping is None:
                state.reason = "interrupt"
                begin("int", signal.SIGINT, now + _group.INT_GRACE_S)
                display.note("colabkit: interrupted; stopping the run (press Stop again to kill it at once)")
            else:
                state.user_interrupt = True
                if state.reason == "budget":
                    state.reason = "interrupt"
                begin("kill", signal.SIGKILL, now + _group.KILL_WAIT_S)
