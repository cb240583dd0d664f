"""A run's process group: finding its members, signalling them, and the SIGINT, SIGTERM, SIGKILL sequence.

The child of ``run()`` leads its own process group. A descendant that leaves the group (``os.setsid``)
is still the run's: ``Tree`` records descendants with their create time while they run, so it can
signal them later without touching a process that merely reused a pid.
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

from . import _procs, display

__all__ = [
    "INT_GRACE_S",
    "KILL_WAIT_S",
    "TERM_GRACE_S",
    "WALK_S",
    "Tree",
    "end_now",
    "group_members",
    "signal_group",
    "stop",
]

INT_GRACE_S = 10.0  # after SIGINT, time for the script to save and exit before SIGTERM
TERM_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the kernel to reap
WALK_S = 1.0  # how often a run's process tree is walked for descendants that left the group


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group; a group that is gone (or not ours) is ignored."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _state(pid: int) -> str | None:
    """The process's state letter from /proc (``"Z"`` for a zombie), ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


class Tree:
    """A run's process group, plus the descendants that left it (``os.setsid``) seen while they ran.

    ``walk()`` records every descendant of the child with its create time; a process counts as ours
    only while that pid still has that create time, so nothing outside the child's tree is touched.
    """

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.descendants: dict[int, float] = {}  # pid -> psutil create time
        self._next_walk = -math.inf

    def walk(self, now: float | None = None) -> None:
        """Record the child's descendants; with ``now``, only if ``WALK_S`` passed since the last walk."""
        if now is not None:
            if now < self._next_walk:
                return
            self._next_walk = now + WALK_S
        import psutil

        try:
            kids = psutil.Process(self.pgid).children(recursive=True)
        except psutil.Error:
            return
        for kid in kids:
            try:
                self.descendants.setdefault(kid.pid, kid.create_time())
            except psutil.Error:
                continue

    def escaped(self) -> list[int]:
        """Recorded descendants still running outside the group."""
        pids = []
        for pid, created in list(self.descendants.items()):
            if not _procs.alive(pid, created) or _state(pid) in (None, "Z"):
                del self.descendants[pid]
                continue
            try:
                if os.getpgid(pid) == self.pgid:
                    continue
            except OSError:
                continue
            pids.append(pid)
        return pids

    def members(self) -> list[int]:
        """Live processes of the group and escaped descendants."""
        return group_members(self.pgid) + self.escaped()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the group and to every escaped descendant."""
        signal_group(self.pgid, sig)
        for pid in self.escaped():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop(tree: Tree, *, int_grace: float, term_grace: float, kill_wait: float) -> list[int]:
    """End a run's processes now: SIGINT, then SIGTERM, then SIGKILL, each until all are gone or its time is up.

    A KeyboardInterrupt while waiting (Stop pressed again) skips to SIGKILL. Returns the processes
    still alive afterwards (normally none).
    """
    tree.walk()
    steps = [(signal.SIGINT, int_grace), (signal.SIGTERM, term_grace), (signal.SIGKILL, kill_wait)]
    step = 0
    while step < len(steps):
        sig, wait = steps[step]
        try:
            if not tree.members():
                return []
            tree.signal(sig)
            deadline = time.monotonic() + wait
            while tree.members() and time.monotonic() < deadline:
                time.sleep(0.02)
            step += 1
        except KeyboardInterrupt:
            step = len(steps) - 1
    return tree.members()


def end_now(tree: Tree | None, proc: Any) -> list[int]:
    """After an error inside ``run()``: ``stop()`` the run's processes and reap the child.

    Returns the processes that survived SIGKILL (normally none).
    """
    left: list[int] = []
    if tree is None:  # the error came before the tree was built: the group is all we know
        signal_group(proc.pid, signal.SIGKILL)
    else:
        try:
            left = stop(tree, int_grace=INT_GRACE_S, term_grace=TERM_GRACE_S, kill_wait=KILL_WAIT_S)
        except Exception as err:  # /proc unreadable: still try the last resort
            display.note(f"colabkit: could not stop the run cleanly: {err!r}")
            signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=KILL_WAIT_S)
    except BaseException:  # a process that survives SIGKILL, or Stop pressed again: the caller reports
        pass
    return left
