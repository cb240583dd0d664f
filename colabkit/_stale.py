"""Process groups of runs, and processes that an earlier run left holding GPU memory.

A run's child leads its own process group; its ``summary.json`` records the child's pid, psutil
create time and the machine's boot id. Together they name the process even after the pid is reused:
a live process with that pid but another create time, or a summary from another boot, is not ours.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from . import display

__all__ = [
    "StaleProcess",
    "boot_id",
    "end",
    "find",
    "group_members",
    "protected_pids",
    "report",
    "signal_group",
]

TERM_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the kernel to reap
_CREATE_TIME_TOLERANCE_S = 0.5


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``), ``""`` if unreadable."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


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


def protected_pids() -> set[int]:
    """This process and its ancestors: never ended as 'stale'."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            pid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
    pids.add(1)
    return pids


@dataclass(frozen=True)
class StaleProcess:
    """A process still alive that an earlier run in ``run_dir`` started (its child or the child's group)."""

    pid: int
    run_dir: Path
    gpu_bytes: int | None
    command: str


def find(runs_root: Path) -> list[StaleProcess]:
    """Processes still alive that an earlier run in ``runs_root`` started, with the GPU memory they hold."""
    import psutil

    if not runs_root.is_dir():
        return []
    boot = boot_id()
    protected = protected_pids()
    found: list[StaleProcess] = []
    holders: dict[int, int] | None = None
    for summary_path in sorted(runs_root.glob("*/summary.json")):
        try:
            data = json.loads(summary_path.read_text(encoding="utf-8"))
            pid = int(data["pid"])
            created = float(data["pid_create_time"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if data.get("boot_id") and boot and data["boot_id"] != boot:
            continue
        try:  # cheap: is there any process in that group at all?
            os.killpg(pid, 0)
        except ProcessLookupError:
            continue
        except (PermissionError, OSError):
            pass
        try:  # the leader alive with another start time: the pid was recycled, not ours
            if abs(psutil.Process(pid).create_time() - created) > _CREATE_TIME_TOLERANCE_S:
                continue
        except psutil.Error:
            pass  # the leader is gone; its group id cannot be reused while members live
        pids = []
        for member in group_members(pid) if pid > 1 else []:
            try:
                started = psutil.Process(member).create_time()
                if started + _CREATE_TIME_TOLERANCE_S >= created and member not in protected:
                    pids.append(member)
            except psutil.Error:
                continue
        if not pids:
            continue
        if holders is None:
            holders = _gpu_holders()
        for member in pids:
            try:
                command = " ".join(psutil.Process(member).cmdline())[:100]
            except psutil.Error:
                command = ""
            found.append(StaleProcess(member, summary_path.parent, holders.get(member), command))
    return found


def _gpu_holders() -> dict[int, int]:
    holders: dict[int, int] = {}
    try:
        from . import gpu

        for p in gpu.gpu_processes():
            holders[p.pid] = holders.get(p.pid, 0) + (p.used_bytes or 0)
    except Exception:  # a probe: no NVML, no GPU, a lost GPU
        pass
    return holders


def end(pids: list[int]) -> list[int]:
    """SIGTERM, then SIGKILL; return the PIDs still alive afterwards."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=KILL_WAIT_S)
    return [p.pid for p in alive]


def report(runs_root: Path, *, kill: bool) -> None:
    """Say which processes of earlier runs are still alive; with ``kill``, end them first."""
    stale = find(runs_root)
    if not stale:
        return
    for s in stale:
        mem = (
            f"holds {display.format_bytes(s.gpu_bytes)} of GPU memory" if s.gpu_bytes else "is still running"
        )
        display.note(f"colabkit: pid {s.pid} from the earlier run {s.run_dir.name} {mem}: {s.command}")
    if not kill:
        display.note("colabkit: pass kill_stale=True to run() to end these processes first")
        return
    left = end([s.pid for s in stale])
    ended = len(stale) - len(left)
    display.note(
        f"colabkit: ended {ended} process(es) left by earlier runs"
        + (f"; still alive: {left}" if left else "")
    )
