"""Processes that earlier runs left alive: finding them, saying so, and ending them on request.

A run's script leads its own process group under the run's supervisor; its ``summary.json`` records the
script's pid and psutil create time, the supervisor's, the launcher's (the process that called ``run()``)
and the machine's boot id. Together they name the processes even after a pid is reused: a live process
with that pid but another create time, or a summary from another boot, is not ours. While the supervisor
lives, the run's processes are it and its descendants (it adopts whatever leaves the script's tree, a
``setsid`` daemon too); else the script's group. A run whose launcher is still alive is in progress
elsewhere (another notebook, ``colabkit run`` in a terminal) and is never ended.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _display, _format, _procs, _runtime
from ._spec import redact
from ._stop import TERM, Pids, Stopper, StopTimes
from ._summary import RunSummary

__all__ = ["StaleProcess", "end", "find", "report"]


@dataclass(frozen=True)
class StaleProcess:
    """A process still alive that an earlier run in ``run_dir`` started (its child or the child's group)."""

    pid: int
    run_dir: Path
    gpu_bytes: int | None
    command: str
    launcher_pid: int | None = None  # set when the run that started it is still going: never ended
    create_time: float | None = None


def find(runs_root: Path) -> list[StaleProcess]:
    """Processes still alive that an earlier run in ``runs_root`` started, with the GPU memory they hold."""
    if not runs_root.is_dir():
        return []
    boot = _runtime.boot_id()
    protected = _procs.protected_pids()
    found: list[StaleProcess] = []
    holders: dict[int, int] | None = None
    seen: list[dict[str, list[int]]] = []

    def marks() -> dict[str, list[int]]:  # one pass over /proc, only when a run's supervisor is gone
        if not seen:
            seen.append(_procs.marked(_procs.RUN_ID_ENV))
        return seen[0]

    for summary_path in sorted(runs_root.glob("*/summary.json")):
        try:
            summary = RunSummary.read(summary_path.parent)
        except (OSError, ValueError):
            continue
        pid, created = summary.pid, summary.pid_create_time
        if pid is None or created is None or pid <= 1 or (summary.boot_id and boot and summary.boot_id != boot):
            continue
        members = _members(summary, summary_path.parent, protected, marks)
        if not members:
            continue
        in_use = summary.launcher_alive()
        if holders is None:
            holders = _gpu_holders()
        for member, started in members:
            command = " ".join(redact(_procs.cmdline(member) or []))[:100]
            found.append(
                StaleProcess(
                    member,
                    summary_path.parent,
                    holders.get(member),
                    command,
                    summary.launcher_pid if in_use else None,
                    started,
                )
            )
    return found


def _members(
    summary: RunSummary, run_dir: Path, protected: set[int], marks: Callable[[], dict[str, list[int]]]
) -> list[tuple[int, float]]:
    """The live processes of an earlier run, with their create times."""
    pid, created = summary.pid, summary.pid_create_time
    assert pid is not None and created is not None
    found: list[int] = []
    sup = summary.supervisor_pid
    if sup is not None and sup > 1 and _procs.alive(sup, summary.supervisor_create_time):
        found = [sup, *_procs.tree_of(sup)]
    else:
        # the supervisor was killed too (OOM killer, kill -9): what left the script's tree and group (a setsid
        # daemon) still carries the run's id in its environment; a run written locally first adds "-<hash>"
        name = run_dir.name
        found = [p for value, pids in marks().items() if value == name or value.startswith(name + "-") for p in pids]
        try:  # cheap: is there any process in that group at all?
            os.killpg(pid, 0)
        except ProcessLookupError:
            pass
        except OSError:
            found += _procs.group_members(pid)
        else:
            if not (_procs.alive(pid) and not _procs.alive(pid, created)):  # else the pid was recycled: not ours
                found += _procs.group_members(pid)
        found = sorted(set(found))
    since = min(created, summary.supervisor_create_time or created)
    members = []
    for member in found:
        started = _procs.create_time(member)
        if started is not None and started + _procs.CREATE_TIME_TOLERANCE_S >= since and member not in protected:
            members.append((member, started))
    return members


def _gpu_holders() -> dict[int, int]:
    holders: dict[int, int] = {}
    try:
        from . import _nvml

        src = _nvml.source()
        for index in range(src.device_count()):
            for pid, used in src.processes(index):
                holders[pid] = holders.get(pid, 0) + (used or 0)
    except Exception:  # a probe: no NVML, no GPU, a lost GPU
        pass
    return holders


def end(stale: list[StaleProcess], times: StopTimes | None = None) -> list[int]:
    """SIGTERM, then SIGKILL (the stop sequence from its second step); return the PIDs still alive afterwards."""
    return Stopper(Pids((s.pid, s.create_time) for s in stale), times).run(first=TERM)


def report(runs_root: Path, *, kill: bool, times: StopTimes | None = None) -> None:
    """Say which processes of earlier runs are still alive; with ``kill``, end those whose run is over."""
    found = find(runs_root)
    stale = [s for s in found if s.launcher_pid is None]
    for s in found:
        if s.launcher_pid is not None:
            _display.note(
                f"colabkit: pid {s.pid} is in use by run {s.run_dir.name} (launcher pid {s.launcher_pid}); "
                f"left alone: {s.command}"
            )
            continue
        mem = (
            f"holds {_format.format_bytes(s.gpu_bytes)} of GPU memory" if s.gpu_bytes else "is still running"
        )
        _display.note(f"colabkit: pid {s.pid} from the earlier run {s.run_dir.name} {mem}: {s.command}")
    if not stale:
        return
    if not kill:
        _display.note(
            "colabkit: pass kill_stale=True to run() (--kill-stale on the command line) to end these processes first"
        )
        return
    left = end(stale, times)
    ended = len(stale) - len(left)
    _display.note(
        f"colabkit: ended {ended} process(es) left by earlier runs"
        + (f"; still alive: {left}" if left else "")
    )
