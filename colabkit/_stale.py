"""Processes that earlier runs left alive: finding them, saying so, and ending them on request.

A run's child leads its own process group; its ``summary.json`` records the child's pid and psutil
create time, the launcher's (the process that called ``run()``) and the machine's boot id. Together
they name the processes even after a pid is reused: a live process with that pid but another create
time, or a summary from another boot, is not ours. A group whose launcher is still alive belongs to
a run in progress elsewhere (another notebook, ``colabkit run`` in a terminal) and is never ended.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import _procs, display, runtime
from ._group import KILL_WAIT_S, TERM_GRACE_S, group_members

__all__ = ["REDACTED", "StaleProcess", "end", "find", "protected_pids", "redact", "report"]

_SECRET_NAME = re.compile(r"token|key|secret|passw(or)?d", re.IGNORECASE)
REDACTED = "***"


def redact(args: Iterable[str]) -> list[str]:
    """Command-line arguments with the values of secret-looking options replaced by ``***``.

    An option whose name holds token, key, secret or password loses its value, written either way:
    ``--api-key X`` and ``--token=X``.

    Examples:
        >>> redact(["--api-key", "sk-123", "--token=abc", "--lr", "3"])
        ['--api-key', '***', '--token=***', '--lr', '3']
    """
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("-") and _SECRET_NAME.search(arg.split("=", 1)[0]):
            if "=" in arg:
                arg = arg.split("=", 1)[0] + "=" + REDACTED
            else:
                hide_next = True
        out.append(arg)
    return out


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
    launcher_pid: int | None = None  # set when the run that started it is still going: never ended


def find(runs_root: Path) -> list[StaleProcess]:
    """Processes still alive that an earlier run in ``runs_root`` started, with the GPU memory they hold."""
    import psutil

    if not runs_root.is_dir():
        return []
    boot = runtime.boot_id()
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
        if pid <= 1 or (data.get("boot_id") and boot and data["boot_id"] != boot):
            continue
        try:  # cheap: is there any process in that group at all?
            os.killpg(pid, 0)
        except ProcessLookupError:
            continue
        except (PermissionError, OSError):
            pass
        if _procs.alive(pid) and not _procs.alive(pid, created):
            continue  # the leader alive with another start time: the pid was recycled, not ours
        pids = []
        for member in group_members(pid):
            try:
                started = psutil.Process(member).create_time()
            except psutil.Error:
                continue
            if started + _procs.CREATE_TIME_TOLERANCE_S >= created and member not in protected:
                pids.append(member)
        if not pids:
            continue
        launcher = data.get("launcher_pid")
        in_use = _procs.alive(launcher, data.get("launcher_create_time"))
        if holders is None:
            holders = _gpu_holders()
        for member in pids:
            try:
                command = " ".join(redact(psutil.Process(member).cmdline()))[:100]
            except psutil.Error:
                command = ""
            found.append(
                StaleProcess(
                    member, summary_path.parent, holders.get(member), command, launcher if in_use else None
                )
            )
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
    alive = procs
    for method, wait in (("terminate", TERM_GRACE_S), ("kill", KILL_WAIT_S)):
        for proc in alive:
            try:
                getattr(proc, method)()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=wait)
    return [p.pid for p in alive]


def report(runs_root: Path, *, kill: bool) -> None:
    """Say which processes of earlier runs are still alive; with ``kill``, end those whose run is over."""
    found = find(runs_root)
    stale = [s for s in found if s.launcher_pid is None]
    for s in found:
        if s.launcher_pid is not None:
            display.note(
                f"colabkit: pid {s.pid} is in use by run {s.run_dir.name} (launcher pid {s.launcher_pid}); "
                f"left alone: {s.command}"
            )
            continue
        mem = (
            f"holds {display.format_bytes(s.gpu_bytes)} of GPU memory" if s.gpu_bytes else "is still running"
        )
        display.note(f"colabkit: pid {s.pid} from the earlier run {s.run_dir.name} {mem}: {s.command}")
    if not stale:
        return
    if not kill:
        display.note(
            "colabkit: pass kill_stale=True to run() (--kill-stale on the command line) to end these processes first"
        )
        return
    left = end([s.pid for s in stale])
    ended = len(stale) - len(left)
    display.note(
        f"colabkit: ended {ended} process(es) left by earlier runs"
        + (f"; still alive: {left}" if left else "")
    )
