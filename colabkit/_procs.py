"""Facts about processes and the host, from ``/proc`` and psutil: the only module that imports psutil.

A process is named by its pid *and* its psutil create time, so a pid the kernel reused for another
process is never mistaken for the one colabkit started.
"""

from __future__ import annotations

import errno
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
    "scan",
    "stat",
    "tree_of",
    "tree_rss",
    "used_memory",
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
    recycled pid from the original; without it any process with the pid counts. A zombie (exited, not
    reaped) is not alive; a process we may not signal or look at counts as alive.

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
    found = stat(pid)
    if found is not None and found.state == "Z":  # exited, not yet reaped (its parent died: nobody may ever)
        return False
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


def scan() -> dict[int, ProcStat]:
    """Every live (non-zombie) process with its stat fields, from one pass over ``/proc`` (empty without it)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    found = {}
    for entry in entries:
        if entry.isdigit():
            st = stat(entry)
            if st is not None and st.state not in ("Z", "X"):
                found[int(entry)] = st
    return found


def tree_of(root: int, procs: dict[int, ProcStat] | None = None) -> dict[int, ProcStat]:
    """The live descendants of ``root`` (not ``root`` itself), from one :func:`scan` (or the one given)."""
    procs = scan() if procs is None else procs
    kids: dict[int, list[int]] = {}
    for pid, st in procs.items():
        kids.setdefault(st.ppid, []).append(pid)
    found: dict[int, ProcStat] = {}
    todo = [root]
    while todo:
        for kid in kids.get(todo.pop(), ()):
            if kid not in found:
                found[kid] = procs[kid]
                todo.append(kid)
    return found


RUN_ID_ENV = "COLABKIT_RUN_ID"  # in every run's environment: its run folder's name (see marked)


def marked(name: str) -> dict[str, list[int]]:
    """Live (non-zombie) processes by the value of ``name`` in their environment: they carry it from the process
    that started them, also after a double fork and ``setsid`` took them out of its tree and its group
    (``/proc/<pid>/environ`` is the environment a process started with). One pass over ``/proc``."""
    key = name.encode() + b"="
    found: dict[str, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                data = fh.read()
        except OSError:  # gone, or another user's
            continue
        at = data.find(b"\0" + key)
        if at < 0 and not data.startswith(key):
            continue
        start = (at + 1 if at >= 0 else 0) + len(key)
        end = data.find(b"\0", start)
        value = data[start : end if end >= 0 else len(data)].decode(errors="replace")
        st = stat(entry)
        if st is not None and st.state != "Z":
            found.setdefault(value, []).append(int(entry))
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


def used_memory(pid: int) -> tuple[int, str] | None:
    """The memory ``pid`` really uses, in bytes, and how it was counted: ``"pss"`` or ``"rss"``.

    PSS (``/proc/<pid>/smaps_rollup``, Linux 4.14+) counts a page shared by n processes as 1/n in each, so
    the sum over a tree (a DataLoader's forked workers share the parent's pages) is what the tree uses;
    RSS counts such a page in full in every process. RSS is the fallback where PSS cannot be read.
    ``None`` when the process is gone.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024, "pss"
        return None  # readable but empty: a zombie, no memory of its own any more
    except OSError as exc:
        if exc.errno == errno.ESRCH:  # the process exited (its memory is gone): statm would say 0 by RSS
            return None
    except (ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), "rss"
    except (OSError, ValueError, IndexError):
        pass
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss), "rss"
    except psutil.Error:
        return None


class TreeMemory:
    """The memory a process and its descendants use, re-walking the tree only every ``refresh_s``.

    Counted by PSS where ``/proc`` gives it (see :func:`used_memory`); ``kind`` says how the last reading
    was counted: ``"pss"``, ``"rss"``, or ``"pss+rss"`` when some processes could only be read by RSS.
    A psutil walk of a tree costs ~1.6 ms: cheap once a few seconds, not at every sample. Until the next
    walk, workers forked since are missing, and with them their share of the pages they took over (PSS
    can read low for up to ``refresh_s``; a DataLoader's workers live far longer).
    """

    def __init__(self, pid: int, refresh_s: float) -> None:
        self.pid = pid
        self.refresh_s = refresh_s
        self._pids: list[int] = []
        self._next_walk = float("-inf")
        self.kind: str | None = None

    def read(self, now: float) -> tuple[set[int], int | None]:
        """PIDs of the tree and the sum of the memory they use (``None`` once the tree is gone)."""
        if now >= self._next_walk:
            self._pids = [self.pid, *descendants(self.pid)] if alive(self.pid) else []
            self._next_walk = now + self.refresh_s
        pids: set[int] = set()
        total = 0
        kinds = set()
        for pid in self._pids:
            got = used_memory(pid)
            if got is None:
                continue
            total += got[0]
            kinds.add(got[1])
            pids.add(pid)
        self._pids = [p for p in self._pids if p in pids]
        if kinds:  # once the tree is gone, the last reading's kind still says how the peak was counted
            self.kind = "+".join(sorted(kinds))
        return pids, (total if pids else None)


def tree_rss(pid: int) -> int | None:
    """Memory ``pid`` and its descendants use now (PSS where readable, see :class:`TreeMemory`), ``None`` when gone."""
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
