"""``summary.json``: a run's record in its run folder, written and read in this one place.

The run writes it before the script starts (``status="running"``), again once it runs (the script's
pid and create time, its supervisor's, the launcher's, the machine's boot id) and again when the run
ends. ``runs()`` reads it for the history, the stale-process finder to know which processes are a run's.
A summary still saying ``running`` whose VM rebooted, or whose processes are gone, is a run that was lost.

When the final write cannot be made (a full disk, a dead Drive) the ending is kept as a *record*: a
small JSON file ``{"run_dir": ..., "changes": {...}}`` in :func:`pending_dir` (``$COLABKIT_CACHE/pending``,
else ``/dev/shm``), or ``.ending.json`` in the run folder when the run's supervisor ended a run whose
launcher died. :meth:`RunSummary.read` applies a record to a summary that still says ``running`` and
writes the result into the folder as soon as it can; :func:`flush_pending` does it for a runs folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _files, _procs

__all__ = ["ENDING", "FILE", "SCHEMA", "STATUSES", "RunSummary", "flush_pending", "iso", "pending_dir", "pending_path"]

FILE = "summary.json"
ENDING = ".ending.json"  # written by the supervisor when it ended a run whose launcher died
SCHEMA = 1
STATUSES = ("running", "finished", "failed", "interrupted", "stopped")
_PENDING_MAX_AGE_S = 30 * 24 * 3600.0  # a record whose run folder never came back is dropped after this


def pending_dir() -> Path:
    """Where summaries that could not be written wait: ``$COLABKIT_CACHE/pending`` (``~/.cache/colabkit/pending``)."""
    base = _files.cache_dir()
    return base / "pending"


def _shm_dir() -> Path:
    return Path("/dev/shm") / f"colabkit-pending-{os.getuid()}"


def pending_path(run_dir: Path, folder: Path | None = None) -> Path:
    """The record file for ``run_dir`` (in ``folder``, by default :func:`pending_dir`)."""
    key = hashlib.sha1(str(Path(os.path.abspath(run_dir))).encode()).hexdigest()[:16]
    return (folder or pending_dir()) / f"{key}.json"


def _records(run_dir: Path) -> list[Path]:
    return [run_dir / ENDING, pending_path(run_dir), pending_path(run_dir, _shm_dir())]


def _newest_record(run_dir: Path) -> tuple[dict[str, Any] | None, list[Path]]:
    found: list[tuple[float, dict[str, Any], Path]] = []
    for path in _records(run_dir):
        data = _files.read_json(path)
        if data is None or not isinstance(data.get("changes"), dict):
            continue
        with contextlib.suppress(OSError):
            found.append((path.stat().st_mtime, data["changes"], path))
    if not found:
        return None, []
    found.sort(key=lambda item: item[0])
    return found[-1][1], [path for _, _, path in found]


def flush_pending(root: Path) -> None:
    """Write the kept endings of run folders in ``root`` that can be written again; drop those long gone.

    Only ``root``'s: a record may point at a Drive that hangs, and only a folder the caller is about to
    use anyway may be touched.
    """
    root = Path(os.path.abspath(root))
    for folder in (pending_dir(), _shm_dir()):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = folder / name
            data = _files.read_json(path)
            if data is None or not isinstance(data.get("run_dir"), str):
                continue
            run_dir = Path(data["run_dir"])
            if run_dir.parent != root:
                continue
            try:
                if RunSummary.read(run_dir).status != "running":  # applied and written, or ended there anyway
                    with contextlib.suppress(OSError):
                        path.unlink()
            except (OSError, ValueError):
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime > _PENDING_MAX_AGE_S:
                        path.unlink()


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
    supervisor_pid: int | None = None
    supervisor_create_time: float | None = None
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
    # the memory monitor's findings (``MemoryReport.to_json``): steps, steps/s, peak per step, creep, the batch
    # estimate or measurement, the OOM autopsy's fix, whether allocation history was on
    memory: dict[str, Any] | None = None
    secrets: dict[str, str] | None = None  # name -> where it came from ("colab", "kaggle", "env", "dotenv"); never a value
    ranks: dict[str, Any] | None = None  # torchrun: nproc, gpus, backend, the rank that failed first, each rank's peaks
    gpus: list[dict[str, Any]] | None = None  # each GPU's peak: index, peak_used_bytes, total_bytes
    last_step: int | None = None  # the newest step the run reached: its output's counter, or its newest checkpoint's
    checkpoint_step: int | None = None  # the step of the newest checkpoint the run left, when its name or state says
    checkpoint: str | None = None  # that checkpoint's path
    copy: dict[str, Any] | None = None  # on Drive, how far the copy from the VM's disk got (written by the copy)
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
            supervisor_pid=_int(data.get("supervisor_pid")),
            supervisor_create_time=_float(data.get("supervisor_create_time")),
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
            memory=data["memory"] if isinstance(data.get("memory"), dict) else None,
            secrets={str(k): str(v) for k, v in data["secrets"].items()} if isinstance(data.get("secrets"), dict) else None,
            ranks=data["ranks"] if isinstance(data.get("ranks"), dict) else None,
            gpus=[g for g in data["gpus"] if isinstance(g, dict)] if isinstance(data.get("gpus"), list) else None,
            last_step=_int(data.get("last_step")),
            checkpoint_step=_int(data.get("checkpoint_step")),
            checkpoint=_str(data.get("checkpoint")),
            copy=data["copy"] if isinstance(data.get("copy"), dict) else None,
            schema=_int(data.get("schema")) or SCHEMA,
        )

    @classmethod
    def read(cls, run_dir: Path) -> RunSummary:
        """The summary in ``run_dir``, with a kept ending applied if it still says ``running`` (and written back).

        Raises:
            OSError: the file cannot be read (missing, or the Drive under it died).
            ValueError: it is not a JSON object.
        """
        data = _files.load_json(run_dir / FILE)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        summary = cls.from_json(data)
        if summary.status != "running":  # only an unfinished summary can have an ending kept elsewhere
            return summary
        changes, paths = _newest_record(run_dir)
        if changes is None:
            return summary
        merged = {**data, **changes}
        merged.pop("by", None)
        summary = cls.from_json(merged)
        try:
            summary.write(run_dir)
        except OSError:  # still not writable: the record stays for the next reader
            return summary
        for path in paths:  # written: the records are done
            with contextlib.suppress(OSError):
                path.unlink()
        return summary

    def write(self, run_dir: Path) -> None:
        """Replace ``run_dir/summary.json`` atomically. Raises OSError when the folder cannot be written."""
        _files.write_json(run_dir / FILE, self.to_json())

    def keep(self, run_dir: Path) -> Path | None:
        """Keep this summary where :meth:`read` finds it, for a run folder that cannot be written now.

        Returns the record's path, or ``None`` when no place could take it either.
        """
        record = {"run_dir": str(run_dir), "changes": self.to_json()}
        for folder in (pending_dir(), _shm_dir()):
            path = pending_path(run_dir, folder)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _files.write_json(path, record)
                return path
            except OSError:
                continue
        return None

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
        """A run still marked running whose VM rebooted (another boot id) or whose processes are gone."""
        if self.status != "running":
            return False
        if self.boot_id and boot_id and self.boot_id != boot_id:
            return True
        if _procs.alive(self.supervisor_pid, self.supervisor_create_time):
            return False
        return not _procs.alive(self.pid, self.pid_create_time)

    def launcher_alive(self) -> bool:
        """Whether the process that started the run (a notebook, ``colabkit run``) is still there."""
        return _procs.alive(self.launcher_pid, self.launcher_create_time)
