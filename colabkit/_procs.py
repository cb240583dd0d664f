"""Facts about processes and the host, from ``/proc`` and psutil: the only module that imports psutil.

A process is named by its pid *and* its psutil create time, so a pid the kernel reused for another
process is never mistaken for the one colabkit started.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

__all__ = [
    "CREATE_TIME_TOLERANCE_S",
    "HostMemory",
    "ProcStat",
    "TreeMemory",
    "alive",
    "cmdline",
    "create_time",
    "descendants",
    "group_members",
    "host_memory",
    "protected_pids",
    "stat",
    "tree_rss",
]

CREATE_TIME_TOLERANCE_S = 0.05  # psutil's create_time of one process is stable to well under this


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` colabkit reads: state letter (``"Z"``: zombie), parent, group."""

    state: str
    ppid: int
    pgid: int


def stat(pid: int | str) -> ProcStat | None:
    """``/proc/<pid>/stat`` of a process, ``None`` when it is gone (or there is no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return ProcStat(fields[0].decode(), int(fields[1]), int(fields[2]))
    except (IndexError, ValueError):
        return None


def create_time(pid: int) -> float | None:
    """psutil's create time of ``pid`` (seconds since the epoch), ``None`` if it is gone or hidden."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: Any, create_time: Any = None) -> bool:
    """True when a process with this pid exists and, if ``create_time`` is a number, started then.

    The create time (psutil's ``Process.create_time()``, recorded when the process started) tells a
    recycled pid from the original; without it any process with the pid counts. A process we may not
    signal or look at counts as alive.

    Args:
        pid: The process id; anything but a positive int is no process.
        create_time: Its psutil create time in seconds since the epoch, or None (or any non-number)
            to check the pid alone.

    Returns:
        Whether the process is (still) there.

    Examples:
        >>> alive(os.getpid())
        True
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but is not ours
        pass
    if not isinstance(create_time, (int, float)) or isinstance(create_time, bool):
        return True
    import psutil

    try:
        actual = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.Error:  # exists, but we may not look at it
        return True
    return abs(actual - create_time) < CREATE_TIME_TOLERANCE_S


def cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid``; ``None`` when it is gone, in another pid namespace or hidden."""
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return None


def descendants(pid: int) -> dict[int, float]:
    """Every live descendant of ``pid`` with its create time (empty when ``pid`` is gone)."""
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    found = {}
    for kid in kids:
        try:
            found[kid.pid] = kid.create_time()
        except psutil.Error:
            continue
    return found


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in entries:
        if entry.isdigit():
            st = stat(entry)
            if st is not None and st.state != "Z" and st.pgid == pgid:
                members.append(int(entry))
    return members


def protected_pids() -> set[int]:
    """This process, its ancestors and init: never ended as a leftover of a run."""
    pids = {1}
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        st = stat(pid)
        if st is None:
            break
        pid = st.ppid
    return pids


class TreeMemory:
    """The resident memory of a process and its descendants, re-walking the tree only every ``refresh_s``.

    A psutil walk of a tree costs ~1.6 ms: cheap once a few seconds, not at every sample.
    """

    def __init__(self, pid: int, refresh_s: float) -> None:
        self.pid = pid
        self.refresh_s = refresh_s
        self._procs: list[Any] = []
        self._next_walk = float("-inf")

    def read(self, now: float) -> tuple[set[int], int | None]:
        """PIDs of the tree and the sum of their resident memory (``None`` once the tree is gone)."""
        import psutil

        if now >= self._next_walk:
            try:
                root = psutil.Process(self.pid)
                self._procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                self._procs = []
            self._next_walk = now + self.refresh_s
        pids: set[int] = set()
        rss = 0
        alive_procs = []
        for proc in self._procs:
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
            pids.add(proc.pid)
            alive_procs.append(proc)
        self._procs = alive_procs
        return pids, (rss if alive_procs else None)


def tree_rss(pid: int) -> int | None:
    """Resident memory of ``pid`` and its descendants now, ``None`` when ``pid`` is gone."""
    return TreeMemory(pid, 0.0).read(0.0)[1]


class HostMemory(NamedTuple):
    """The machine's RAM in bytes."""

    total: int
    available: int


def host_memory() -> HostMemory:
    """Total and available RAM of this machine."""
    import psutil

    vm = psutil.virtual_memory()
    return HostMemory(int(vm.total), int(vm.available))
