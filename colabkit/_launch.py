"""Starting a run's supervisor (``_supervisor``) and talking to it: the output pipe, the lifeline and the events.

The launcher (the notebook kernel, ``colabkit run``) creates three pipes: the output pipe (the script's
stdout and stderr, in the order written; the supervisor also holds its reading end, so that after the
launcher died the script never meets a broken pipe), the lifeline (the supervisor's stdin, only ever
written by the launcher: its EOF tells the supervisor the launcher is gone) and the events pipe
(``started``, ``exited``, ... from the supervisor). :class:`Supervised` is the launcher's handle on all three.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SUPERVISOR", "LaunchError", "Supervised", "end_now", "reap"]

SUPERVISOR = Path(__file__).with_name("_supervisor.py")
_START_TIMEOUT_S = 60.0  # a cold interpreter on a busy machine
_PIPE_BYTES = 1024**2  # the output pipe's buffer (Linux allows this much unprivileged; the default is 64 KiB)


class LaunchError(OSError):
    """The supervisor could not start the command (``errno`` and ``strerror`` as ``exec`` said)."""


@dataclass
class Supervised:
    """A started supervisor: ``proc`` is its process, ``pid`` the script's (also its process group)."""

    proc: subprocess.Popen[bytes]
    output_fd: int  # the reading end of the output pipe (the launcher's)
    pid: int = 0
    returncode: int | None = None  # the script's, once the supervisor said it exited
    orphaned: bool = False  # the supervisor took over the run (it was signalled itself, or the lifeline broke)
    signals: list[int] = field(default_factory=list)  # signals sent to the supervisor itself, to stop the run
    notes: list[str] = field(default_factory=list)
    _events: int = -1
    _lifeline: int = -1
    _buffer: bytes = b""

    @classmethod
    def start(cls, command: list[str], *, cwd: Path, env: dict[str, str], config: dict[str, Any]) -> Supervised:
        """Start the supervisor running ``command`` and wait until the script runs.

        Raises:
            LaunchError: the command could not be started (no such interpreter, not executable).
            OSError: the supervisor itself could not be started.
        """
        out_r, out_w = os.pipe()
        with contextlib.suppress(ImportError, OSError):  # room for a burst while this process is busy drawing
            import fcntl

            fcntl.fcntl(out_w, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
        ev_r, ev_w = os.pipe()
        life_r, life_w = os.pipe()
        config = {**config, "output_fd": out_r, "events_fd": ev_w}
        try:
            proc = subprocess.Popen(
                [sys.executable or "python3", "-I", "-S", str(SUPERVISOR), json.dumps(config), "--", *command],
                cwd=str(cwd),
                env=env,
                stdin=life_r,
                stdout=out_w,
                stderr=out_w,  # one pipe: the log and the screen keep the order the script wrote in
                pass_fds=(out_r, ev_w),
                start_new_session=True,
            )
        except BaseException:
            for fd in (out_r, ev_r, life_w):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, ev_w, life_r):
                os.close(fd)
        os.set_blocking(life_w, False)
        handle = cls(proc, out_r, _events=ev_r, _lifeline=life_w)
        try:
            handle._wait_started()
        except BaseException:
            handle.kill()
            with contextlib.suppress(BaseException):
                proc.wait(timeout=_START_TIMEOUT_S)
            handle.close()
            raise
        return handle

    def _wait_started(self) -> None:
        import select

        while not self.pid:
            ready, _, _ = select.select([self._events], [], [], _START_TIMEOUT_S)
            if not ready:
                raise OSError(f"colabkit's supervisor did not start the script within {_START_TIMEOUT_S:g} s")
            if not self._read_events():
                break
        if self.pid:
            return
        for note in self.notes:
            if note.startswith("failed "):
                code, _, text = note[len("failed ") :].partition(" ")
                raise LaunchError(int(code) if code.isdigit() else 0, text)
        self.proc.wait()
        raise OSError(f"colabkit's supervisor exited with status {self.proc.returncode} before the script started")

    def _read_events(self) -> bool:
        """Take what the supervisor said; False once it can say nothing more."""
        if self._events < 0:
            return False
        try:
            data = os.read(self._events, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            os.close(self._events)
            self._events = -1
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            word, _, rest = raw.decode("utf-8", "replace").partition(" ")
            if word == "started" and rest.isdigit():
                self.pid = int(rest)
                os.set_blocking(self._events, False)
            elif word == "exited":
                self.returncode = int(rest)
            elif word == "orphaned":
                self.orphaned = True
            elif word == "signal" and rest.isdigit():
                self.signals.append(int(rest))
            elif word == "failed":
                self.notes.append(f"failed {rest}")
            elif word == "note":
                self.notes.append(rest)
        return True

    def poll(self) -> None:
        """Read the events that arrived (never blocks)."""
        self._read_events()

    @property
    def script_done(self) -> bool:
        """Whether the script itself ended (or the supervisor is gone and cannot say)."""
        return self.returncode is not None or self.finished

    @property
    def finished(self) -> bool:
        """Whether the supervisor exited: every process of the run is gone (it stays while one is left)."""
        if self.proc.poll() is None:
            return False
        self._read_events()  # what it said before it exited
        return True

    def tell(self, step: str, seconds: float, reason: str | None) -> bool:
        """Hand the stop sequence's step ``step`` to the supervisor, which sends its signal to every process of
        the run, once; ``seconds`` until the next step. False when the supervisor cannot take it (it is gone):
        then the caller signals.

        The supervisor is the one sender while it lives, so a launcher killed in the middle of a step leaves
        no process without its signal and none with two (a second SIGINT would break a KeyboardInterrupt save).
        """
        if self._lifeline < 0 or self.proc.poll() is not None:
            return False
        message = f"stop {step} {max(0.0, seconds):.3f} {reason or 'interrupt'}\n".encode()
        try:
            return os.write(self._lifeline, message) == len(message)
        except OSError:  # gone, or (never in practice) a full pipe
            return False

    def release(self) -> None:
        """Close the lifeline: the supervisor ends whatever is left of the run by itself."""
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1

    def kill(self) -> None:
        """The last resort: SIGKILL every process of the run (through the supervisor while it lives), then let it go."""
        import signal

        if not self.tell("kill", 0.0, "error") and self.pid:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        self.release()

    def close(self, *, output: bool = True) -> None:
        """After the run: close what is still open of the pipes.

        ``output=False`` leaves the output pipe open: a reader thread still blocked on it (something outside
        the run holds its other end) must not find its descriptor number reused by another file.
        """
        self.release()
        if self._events >= 0:
            os.close(self._events)
            self._events = -1
        if output and self.output_fd >= 0:
            os.close(self.output_fd)
            self.output_fd = -1


def reap(child: Supervised, wait_s: float) -> None:
    """Wait for the supervisor (it exits once the run's last process is gone); past ``wait_s``, leave it to itself."""
    try:
        child.proc.wait(timeout=wait_s)
    except BaseException:  # a process stuck past SIGKILL, or Stop pressed again: the supervisor keeps at it
        child.release()
    child.poll()


def end_now(tree: Any, child: Supervised | None, times: Any, clock: Any) -> list[int]:
    """After an error inside ``run()``: the whole stop sequence (``times``, a ``StopTimes``) on the run's processes
    (``tree``, a ``_stop.Tree``), then reap the supervisor. Returns the processes that survived SIGKILL (normally none).
    """
    from . import _display
    from ._stop import Stopper

    if child is None:
        return []
    left: list[int] = []
    if tree is None:  # the error came before the tree was built: the supervisor knows the rest
        child.kill()
    else:
        try:
            stopper = Stopper(tree, times, clock)
            stopper.on_begin = lambda step, seconds: child.tell(step, seconds, "error")
            left = stopper.run()
        except Exception as err:  # /proc unreadable: still try the last resort
            _display.note(f"colabkit: could not stop the run cleanly: {err!r}")
            child.kill()
    reap(child, times.kill_wait)
    return left
