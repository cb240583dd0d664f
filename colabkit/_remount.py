"""Remounting Drive without breaking it: step out of the mount, clear what holds a dead or hung one, bound
``drive.mount`` by the wall clock, then step back into the same folder and give the project its imports back.

What the real ``google.colab.drive.mount`` does to a mount (colab-facts 7) decides the order: it runs
``umount -f MOUNTPOINT || umount MOUNTPOINT; pkill -9 -x drive`` in a shell that inherits the caller's working
directory, then a watcher loop in that same shell. A kernel whose cwd is inside Drive therefore turns
``umount -f`` into "cut the live connection, then fail: target is busy", and the watcher of a failed mount
keeps the dead mountpoint busy for every later try. So colabkit leaves the mount first, ends drive.py's own
leftover shells that still hold it (never the kernel, its ancestors, or anyone else's process), takes the
dead mount away, and only then calls ``drive.mount``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import _display, _mounts, _pathguard, _procs
from ._mounts import PROBE_TIMEOUT_S, Mount
from .errors import MountError

__all__ = [
    "Attempts",
    "broken_error",
    "busy_error",
    "clear",
    "dead_error",
    "drive_py_helper",
    "hung_error",
    "others_holding",
    "restore_imports",
    "stepped_out",
]

log = logging.getLogger(__name__)

FIRST_TRY_S = 120.0  # drive.mount's own default; a big My Drive root needs minutes: the retry gets the rest
DEFAULT_TIMEOUT_S = 730.0  # 120 s, then a retry with 600 s, each with its margin below
_MARGIN_MAX_S = 5.0  # DriveFS's own time-out comes this much before colabkit's deadline for the attempt
_HELPER_EXIT_S = 5.0
_SETTLE_S = 0.05


@contextlib.contextmanager
def stepped_out(point: Path) -> Iterator[Callable[..., Path | None]]:
    """Leave ``point`` if the working directory is inside it; the context yields ``back(quiet=False)``, which
    returns into the same folder (or the open project's, when the old one cannot be reached); not called,
    the working directory stays at ``point``'s parent."""
    try:
        cwd: Path | None = Path(os.getcwd())
    except OSError:  # the cwd of a mount that was taken away
        cwd = None
    inside = cwd is None or _mounts.within(cwd, point)
    if inside:
        log.info("leaving %s so that it can be remounted; the working directory is %s for now", point, point.parent)
        os.chdir(point.parent)

    def back(quiet: bool = False) -> Path | None:
        if not inside:
            return None
        targets = [cwd] if cwd is not None else []
        project = _project_on(point)
        if project is not None and project not in targets:
            targets.append(project)
        for target in targets:
            if _mounts.health(target).state != "live":
                continue
            try:
                os.chdir(target)
                return target
            except OSError:
                continue
        if not quiet:
            _display.note(
                f"colabkit: {cwd or 'the old working directory'} is gone; the working directory is {point.parent}"
            )
        return None

    yield back


def _project_on(point: Path) -> Path | None:
    """The open project's folder, when it lies on ``point``."""
    entry = _pathguard.project_entry()
    return entry if entry is not None and _mounts.within(entry, point) else None


def restore_imports(point: Path) -> None:
    """After a remount: the open project's folder is on ``sys.path`` again and found by imports at once."""
    _pathguard.refresh(point)
    project = _project_on(point)
    if project is not None and str(project) not in sys.path:
        sys.path.insert(0, str(project))
    importlib.invalidate_caches()


# -- the errors of a mount that cannot be used ------------------------------------------------------


def _again(method: str, surface: str = "api") -> str:
    if surface == "cli":
        return "`colabkit mount --force`" if method == "drive" else "`colabkit mount --method ocamlfuse --force`"
    return "colabkit.mount(force=True)" if method == "drive" else "colabkit.mount('ocamlfuse', force=True)"


def dead_error(m: Mount, what: str, then: str) -> MountError:
    def hint(surface: str) -> str:
        return (
            f"Remount with {_again(m.method, surface)}, then {then}. Files written before the mount died may "
            "still sit in the Drive client's local cache and be uploaded after the remount: keep this runtime "
            "until flush() succeeds, and check that your latest files are on Drive."
        )

    return MountError(
        f"Drive at {m.mountpoint} is dead ([Errno 107] Transport endpoint is not connected), so {what}",
        hint("api"),
        mountpoint=m.mountpoint,
        method=m.method,
        reason="dead",
        cli_hint=hint("cli"),
    )


def hung_error(m: Mount, what: str) -> MountError:
    def hint(surface: str) -> str:
        return (
            f"Wait a minute and try again. If it stays hung, restart the Drive client with "
            f"{_again(m.method, surface)}; writes it has not uploaded yet may be lost in the restart."
        )

    return MountError(
        f"Drive at {m.mountpoint} is not answering: the Drive client did not reply within {PROBE_TIMEOUT_S:g} s "
        f"(it hangs), so {what}",
        hint("api"),
        mountpoint=m.mountpoint,
        method=m.method,
        reason="hung",
        cli_hint=hint("cli"),
    )


def broken_error(state: str, m: Mount, err: int | None, what: str, then: str) -> MountError:
    """The error for using a mount that is dead, hung or answers with another errno ``err``."""
    if state == "dead":
        return dead_error(m, what, then)
    if state == "hung":
        return hung_error(m, what)
    detail = f"[Errno {err}] {os.strerror(err)}" if err else "an error"
    return MountError(
        f"Drive at {m.mountpoint} answers with {detail}, so {what}",
        f"Remount with {_again(m.method)}, then {then}.",
        mountpoint=m.mountpoint,
        method=m.method,
        reason="error",
        cli_hint=f"Remount with {_again(m.method, 'cli')}, then {then}.",
    )


def busy_error(point: Path, method: str, others: list[_mounts.Holder]) -> MountError:
    shown = "; ".join(h.describe() for h in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    fix = f"Stop those processes or close those files (cd out of {point} in terminals), then run {{}} again."
    return MountError(
        f"Drive at {point} is in use, and remounting would cut it off under them: {shown}",
        fix.format(_again(method)),
        mountpoint=point,
        method=method,
        reason="busy",
        cli_hint=fix.format(_again(method, "cli")),
    )


# -- what holds a mountpoint -----------------------------------------------------------------------


def drive_py_helper(holder: _mounts.Holder) -> bool:
    """A process google.colab's drive.py left: its ``bash --noediting -i`` shell (the watcher loop and the
    DriveFS subshell are copies of it), that shell's ``sleep``, or DriveFS (``drive``) itself."""
    argv = holder.cmdline
    if not argv:
        return False
    name = os.path.basename(argv[0])
    if name == "bash" and list(argv[1:]) == ["--noediting", "-i"]:
        return True
    if name == "drive":
        return True
    if name == "sleep":
        st = _procs.stat(holder.pid)
        parent = _procs.cmdline(st.ppid) if st is not None else None
        return bool(parent) and os.path.basename(parent[0]) == "bash" and list(parent[1:]) == ["--noediting", "-i"]
    return False


def others_holding(point: Path) -> list[_mounts.Holder]:
    """Holders of ``point`` other than drive.py's own helpers (this process included, when it still holds it)."""
    return [h for h in _mounts.holders(point) if not drive_py_helper(h)]


def _end(pids: list[int]) -> None:
    """SIGKILL each pid and wait (bounded) until none is left alive."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _HELPER_EXIT_S
    while time.monotonic() < deadline:
        left = [p for p in pids if (st := _procs.stat(p)) is not None and st.state != "Z"]
        if not left:
            return
        time.sleep(_SETTLE_S)
    log.warning("processes %s did not end within %g s", pids, _HELPER_EXIT_S)


def clear(point: Path, state: str, method: str) -> None:
    """Make a dead or hung mount at ``point`` go away so that a new one can be made there.

    Hung: ``umount -f`` cuts the connection first (nothing can be asked of it before). Then drive.py's
    leftover shells that hold the mountpoint are ended, the mount is unmounted, and if other processes
    still hold it (a terminal, a training process, open files) it is detached (``umount -l``) and they are named.
    """
    if state == "hung":
        _mounts.abort(point)
    protected = _procs.protected_pids()
    helpers = [h for h in _mounts.holders(point) if drive_py_helper(h) and h.pid not in protected]
    if helpers:
        log.warning(
            "ending drive.py's leftovers that hold %s: %s", point, "; ".join(h.describe() for h in helpers)
        )
        _end_frozen({h.pid for h in helpers}, protected)
    if _mounts.entry(point) is None:
        return
    still = others_holding(point)  # named before the mount goes: a detached mount's paths read differently
    with contextlib.suppress(MountError):
        _mounts.unmount(point)  # fusermount3 -u, else umount -l when something still holds it
    if _mounts.entry(point) is not None and not _mounts.detach(point):
        raise MountError(
            f"the {state} Drive mount at {point} could not be taken away (umount -l failed)",
            "Restart the runtime (Runtime → Restart session), then mount again.",
            mountpoint=point,
            method=method,
            reason=state,
        )
    if still:
        _display.note(
            f"colabkit: the {state} Drive mount at {point} was detached; these processes still used it and keep "
            "seeing the old one until restarted: " + "; ".join(h.describe() for h in still[:5])
        )


# -- drive.mount, bounded by the wall clock --------------------------------------------------------


def _is_drive_py_shell(pid: int) -> bool:
    argv = _procs.cmdline(pid) or []
    return bool(argv) and os.path.basename(argv[0]) in ("bash", "setsid") and "--noediting" in argv


class Attempts:
    """``drive.mount`` tries within one wall-clock budget: the first gets at most :data:`FIRST_TRY_S`,
    a retry after a time-out gets what is left.

    Each try runs on the caller's thread (google.colab's frontend calls are not thread-safe); a watchdog
    thread ends the try's drive.py shell and everything it started when the try's share of the budget is
    spent, which makes drive.mount return at once. DriveFS is told a slightly shorter time-out than the
    share, so that its own "timeout during initial read" (and the retry it calls for) normally comes first.
    """

    def __init__(self, timeout: float | None) -> None:
        self.total = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        if not self.total > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.started = time.monotonic()
        self.margin = min(_MARGIN_MAX_S, self.total / 8)

    def left(self) -> float:
        return self.total - (time.monotonic() - self.started)

    def first_share(self) -> float:
        return min(FIRST_TRY_S + self.margin, self.total / 2)

    def drivefs_ms(self, share: float) -> int:
        return max(1000, int((share - self.margin) * 1000))

    def run(self, share: float, call: Callable[[int], None]) -> tuple[bool, Exception | None]:
        """Call ``call(timeout_ms)``: whether it ran past ``share`` seconds and was ended, and what it raised."""
        started_wall = time.time()
        fired = threading.Event()
        done = threading.Event()

        def watch() -> None:
            if done.wait(share):
                return
            fired.set()
            while not done.is_set():  # drive.py may start its shell only after the consent wait returns
                _end_shells_since(started_wall)
                done.wait(0.1)

        watchdog = threading.Thread(target=watch, name="colabkit-mount-watchdog", daemon=True)
        watchdog.start()
        error: Exception | None = None
        try:
            call(self.drivefs_ms(share))
        except Exception as exc:
            error = exc
        except BaseException:  # Ctrl-C / Stop: leave no half-started DriveFS behind
            done.set()
            watchdog.join()
            _end_shells_since(started_wall)
            raise
        finally:
            done.set()
            watchdog.join()
        if error is not None and not fired.is_set():
            _end_shells_since(started_wall)  # drive.mount failed: nothing of this try may keep running
        return fired.is_set(), error


def _end_shells_since(started_wall: float) -> None:
    """End drive.py's shells that this process started since ``started_wall``, and all they started."""
    me = os.getpid()
    for pid, created in _procs.descendants(me).items():
        st = _procs.stat(pid)
        if st is None or st.ppid != me or created < started_wall - 1.0 or not _is_drive_py_shell(pid):
            continue
        _end_frozen({pid}, _procs.protected_pids())


def _end_frozen(roots: set[int], protected: set[int]) -> None:
    """End ``roots`` and all their descendants: stopped first (SIGSTOP), so that none forks a process the
    SIGKILL would miss (a watcher loop starts a new ``sleep`` every half second), then killed."""
    frozen: set[int] = set()
    todo = set(roots) - protected
    while todo:
        for pid in todo:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= todo
        todo = {kid for pid in todo for kid in _procs.descendants(pid)} - frozen - protected
    _end(sorted(frozen))
