"""``summary.json``: a run's record in its run folder, written and read in this one place.

The run writes it when the child starts (``status="running"``, the child's pid and create time, the
launcher's, the machine's boot id) and again when the run ends. ``runs()`` reads it for the history,
the stale-process finder to know which processes are a run's. A summary still saying ``running`` whose
VM rebooted, or whose child is gone, is a run that was lost.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _files, _procs

__all__ = ["FILE", "SCHEMA", "STATUSES", "RunSummary", "iso"]

FILE = "summary.json"
SCHEMA = 1
STATUSES = ("running", "finished", "failed", "interrupted", "stopped")


def iso(ts: float | None) -> str | None:
    """A time stamp as ``2026-01-01T12:00:00Z``."""
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class RunSummary:
    """The fields of ``summary.json``. Times are ISO strings in UTC, bytes ``int``, ``None`` where unknown.

    ``status`` is one of :data:`STATUSES`, or ``"unknown"`` when a file held something else.
    """

    status: str = "running"
    script: str | None = None
    args: tuple[str, ...] = ()
    started: str | None = None
    ended: str | None = None
    duration_s: float | None = None
    returncode: int | None = None
    pid: int | None = None
    pid_create_time: float | None = None
    launcher_pid: int | None = None
    launcher_create_time: float | None = None
    boot_id: str | None = None
    hostname: str | None = None
    peak_gpu_bytes: int | None = None
    gpu_total_bytes: int | None = None
    framework_peak_bytes: int | None = None
    attribution: str | None = None
    log: str = "output.log"
    reason: str | None = None
    resumed_from: str | None = None
    budget_s: float | None = None
    schema: int = SCHEMA

    # -- reading and writing --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["args"] = list(self.args)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """A summary from parsed JSON; a field of the wrong type reads as unknown (``None``)."""
        status = data.get("status")
        args = data.get("args")
        return cls(
            status=status if status in STATUSES else "unknown",
            script=_str(data.get("script")),
            args=tuple(str(a) for a in args) if isinstance(args, list) else (),
            started=_str(data.get("started")),
            ended=_str(data.get("ended")),
            duration_s=_float(data.get("duration_s")),
            returncode=_int(data.get("returncode")),
            pid=_int(data.get("pid")),
            pid_create_time=_float(data.get("pid_create_time")),
            launcher_pid=_int(data.get("launcher_pid")),
            launcher_create_time=_float(data.get("launcher_create_time")),
            boot_id=_str(data.get("boot_id")),
            hostname=_str(data.get("hostname")),
            peak_gpu_bytes=_int(data.get("peak_gpu_bytes")),
            gpu_total_bytes=_int(data.get("gpu_total_bytes")),
            framework_peak_bytes=_int(data.get("framework_peak_bytes")),
            attribution=_str(data.get("attribution")),
            log=_str(data.get("log")) or "output.log",
            reason=_str(data.get("reason")),
            resumed_from=_str(data.get("resumed_from")),
            budget_s=_float(data.get("budget_s")),
            schema=_int(data.get("schema")) or SCHEMA,
        )

    @classmethod
    def read(cls, run_dir: Path) -> RunSummary:
        """The summary in ``run_dir``.

        Raises:
            OSError: the file cannot be read (missing, or the Drive under it died).
            ValueError: it is not a JSON object.
        """
        data = _files.load_json(run_dir / FILE)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return cls.from_json(data)

    def write(self, run_dir: Path) -> None:
        """Replace ``run_dir/summary.json`` atomically. Raises OSError when the folder cannot be written."""
        _files.write_json(run_dir / FILE, self.to_json())

    def replace(self, **changes: Any) -> RunSummary:
        return dataclasses.replace(self, **changes)

    # -- what it tells ---------------------------------------------------------------------------------
    @property
    def started_at(self) -> _dt.datetime | None:
        return _parse_time(self.started)

    @property
    def ended_at(self) -> _dt.datetime | None:
        return _parse_time(self.ended)

    def lost(self, boot_id: str) -> bool:
        """A run still marked running whose VM rebooted (another boot id) or whose child is gone."""
        if self.status != "running":
            return False
        if self.boot_id and boot_id and self.boot_id != boot_id:
            return True
        return not _procs.alive(self.pid, self.pid_create_time)

    def launcher_alive(self) -> bool:
        """Whether the process that started the run (a notebook, ``colabkit run``) is still there."""
        return _procs.alive(self.launcher_pid, self.launcher_create_time)
