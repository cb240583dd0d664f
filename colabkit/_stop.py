"""Ending a run's processes: who they are (``Tree``, ``Pids``) and the one stop sequence, SIGINT → SIGTERM → SIGKILL.

The script of ``run()`` leads its own process group under the run's supervisor, a child subreaper: a
descendant that leaves the group (``os.setsid``, a double fork) is still the supervisor's descendant,
and ``Tree`` finds it there when it signals, so none is missed between two looks.

``Stopper`` is the sequence every ending uses (Stop, timeout, budget, leftovers of a finished script,
an error inside ``run()``, the stale-process clean-up): each step signals every member and waits until
none is left or its deadline passes, then the next step begins. It never sleeps on its own: the run's
output loop calls :meth:`Stopper.poll` between two reads, so output keeps flowing while it waits;
:meth:`Stopper.run` is the blocking form for callers with nothing else to do.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from . import _procs

__all__ = ["INT", "KILL", "STEPS", "TERM", "Targets", "Pids", "StopTimes", "Stopper", "Tree", "signal_group"]

WALK_S = 1.0  # how often a run's process tree is walked for descendants that left the group
_POLL_S = 0.02  # how often the blocking form looks again

INT, TERM, KILL = "int", "term", "kill"
STEPS: tuple[tuple[str, int], ...] = ((INT, signal.SIGINT), (TERM, signal.SIGTERM), (KILL, signal.SIGKILL))


@dataclass(frozen=True)
class StopTimes:
    """The waits of the stop sequence, in seconds."""

    int_grace: float = 10.0  # after SIGINT: time for the script to save and exit before SIGTERM
    term_grace: float = 5.0  # after SIGTERM, before SIGKILL
    kill_wait: float = 5.0  # after SIGKILL, how long to wait for the kernel to reap
    pipe_grace: float = 1.0  # after the script exited, how long its leftovers may hold the pipes

    def after(self, step: str) -> float:
        """How long the step ``step`` waits before the next one."""
        return {INT: self.int_grace, TERM: self.term_grace, KILL: self.kill_wait}[step]


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to a process group; a group that is gone (or not ours) is ignored."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Targets(Protocol):
    """What a stop sequence ends: something that lists its live processes and signals them."""

    def members(self) -> list[int]: ...

    def signal(self, sig: int) -> None: ...


class Tree:
    """A run's processes: the script's process group and every other descendant of the run's supervisor.

    ``root`` is the supervisor (``_supervisor``): a child subreaper, so whatever the script leaves behind
    (a ``setsid`` daemon, a helper started as the script exits) is reparented to it and stays its
    descendant; ``members()`` and ``signal()`` read that tree from ``/proc`` when they are called, so a
    process started between two walks is never missed. Without a root (or once the supervisor is gone),
    the descendants ``walk()`` recorded with their create time stand in: a process counts as ours only
    while that pid still has that create time, so nothing outside the run is touched.
    """

    def __init__(self, pgid: int, root: int | None = None) -> None:
        self.pgid = pgid
        self.root = root
        self.descendants: dict[int, float] = {}  # pid -> psutil create time
        self._next_walk = -math.inf

    def walk(self, now: float | None = None) -> None:
        """Record the run's descendants; with ``now``, only if ``WALK_S`` passed since the last walk."""
        if now is not None:
            if now < self._next_walk:
                return
            self._next_walk = now + WALK_S
        for pid, created in _procs.descendants(self.root or self.pgid).items():
            self.descendants.setdefault(pid, created)

    def _live(self) -> dict[int, _procs.ProcStat]:
        """The run's live processes now: the group, the supervisor's descendants, the recorded escapees."""
        procs = _procs.scan()
        found = {pid: st for pid, st in procs.items() if st.pgid == self.pgid}
        if self.root is not None:
            found.update(_procs.tree_of(self.root, procs))
        for pid, created in list(self.descendants.items()):
            st = procs.get(pid)
            if st is None or not _procs.alive(pid, created):
                del self.descendants[pid]
            else:
                found[pid] = st
        return found

    def escaped(self) -> list[int]:
        """The run's live processes outside the script's group."""
        return sorted(pid for pid, st in self._live().items() if st.pgid != self.pgid)

    def members(self) -> list[int]:
        """The run's live processes."""
        return sorted(self._live())

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the group and, each once, to every process of the run outside it."""
        signal_group(self.pgid, sig)
        for pid in self.escaped():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


class Pids:
    """A fixed set of processes, each named by pid and create time (an earlier run's leftovers)."""

    def __init__(self, procs: Iterable[tuple[int, float | None]]) -> None:
        self.procs = dict(procs)

    def members(self) -> list[int]:
        return [pid for pid, created in self.procs.items() if _alive_not_zombie(pid, created)]

    def signal(self, sig: int) -> None:
        for pid in self.members():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _alive_not_zombie(pid: int, created: float | None) -> bool:
    st = _procs.stat(pid)
    return st is not None and st.state != "Z" and _procs.alive(pid, created)


class Stopper:
    """One stop sequence over ``targets``: SIGINT, then SIGTERM, then SIGKILL, each until all are gone or its time is up.

    ``begin()`` starts it at any step (a budget starts at SIGTERM, a second Stop jumps to SIGKILL);
    ``poll()`` moves it on. ``step`` is ``None`` until it begins, then ``"int"``, ``"term"`` or ``"kill"``;
    ``deadline`` is when the next step is due (on ``clock``).
    """

    def __init__(
        self, targets: Targets, times: StopTimes | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.targets = targets
        self.times = times or StopTimes()
        self.clock = clock
        self.step: str | None = None
        self.deadline: float | None = None
        self.survivors: list[int] = []
        # (step, seconds to the next step) -> True when someone else (the run's supervisor) sends the signal
        self.on_begin: Callable[[str, float], bool] | None = None

    @property
    def started(self) -> bool:
        return self.step is not None

    def begin(self, step: str, now: float | None = None, *, until: float | None = None) -> None:
        """Send the signal of ``step`` now; the next step is due at ``until`` (default: this step's wait)."""
        now = self.clock() if now is None else now
        self.step = step
        self.deadline = until if until is not None else now + self.times.after(step)
        handed = self.on_begin(step, self.deadline - now) if self.on_begin is not None else False
        if not handed:
            self.targets.signal(dict(STEPS)[step])

    def poll(self, now: float | None = None) -> str:
        """Move the sequence on: ``"done"`` (nothing left), ``"waiting"``, ``"term"`` or ``"kill"`` (that
        step just began), or ``"survived"`` (SIGKILL's wait is over and ``survivors`` are still alive)."""
        now = self.clock() if now is None else now
        left = self.targets.members()
        if not left:
            return "done"
        if self.step is None or self.deadline is None or now < self.deadline:
            return "waiting"
        if self.step == KILL:
            self.survivors = left
            return "survived"
        following = TERM if self.step == INT else KILL
        self.begin(following, now)
        return following

    def run(self, first: str = INT) -> list[int]:
        """The blocking form: run the whole sequence from ``first``; return the processes that survived SIGKILL.

        A KeyboardInterrupt while waiting (Stop pressed again) skips to SIGKILL.
        """
        if not self.targets.members():
            return []
        self.begin(first)
        while True:
            try:
                state = self.poll()
                if state == "done":
                    return []
                if state == "survived":
                    return self.survivors
                time.sleep(_POLL_S)
            except KeyboardInterrupt:
                if self.step != KILL:
                    self.begin(KILL)
