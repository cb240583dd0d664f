"""Run history: every run folder's ``summary.json`` as one table, with how each run ended and why (finished;
failed, with the error's last line; stopped by its budget at step N; lost with its VM), runs whose VM vanished
shown as lost, and a copy to Drive that a run left unfinished completed from this machine's local folder."""

from __future__ import annotations

import dataclasses
import errno
import html
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

from . import _drive, _mounts, _progress, _project, _runtime
from ._display import html_cell
from ._format import format_duration, format_gib
from ._mounts import DEAD_ERRNOS
from ._summary import RunSummary
from .errors import MountError, ProjectNotFound

__all__ = ["RunInfo", "RunList", "read_run", "runs"]

_INTERRUPTED = {
    "interrupt": "stopped with Stop or Ctrl-C",
    "timeout": "stopped by its timeout",
    "launcher": "ended when the notebook (or colabkit run) that started it died",
    "signal": "stopped by a signal to its supervisor",
}
_ERROR_TAIL = 8192  # bytes of output.log read back for a failed run's last line


@dataclass(frozen=True)
class RunInfo:
    """One run folder.

    ``status`` is ``finished``, ``failed``, ``interrupted``, ``stopped`` (its budget ran out),
    ``running``, ``lost`` or ``unknown``. ``lost`` means the summary still says running, but its VM
    rebooted or its process is gone. ``duration_s`` of a running run counts up to now. ``reason`` is
    why colabkit stopped it (``"budget"``, ``"timeout"``, ``"interrupt"``). Bytes are ``int``; missing
    facts are ``None``.
    """

    name: str
    path: Path
    status: str
    script: str | None = None
    started: datetime | None = None
    ended: datetime | None = None
    duration_s: float | None = None
    returncode: int | None = None
    peak_gpu_bytes: int | None = None
    gpu_total_bytes: int | None = None
    reason: str | None = None
    problem: str | None = None  # why the summary could not be read
    last_step: int | None = None  # the newest step the run reached, as its output or its checkpoints told
    checkpoint_step: int | None = None  # the step of the newest checkpoint it left, when known
    error: str | None = None  # a failed run's last line of output (the error)
    lost_why: str | None = None  # "VM recycled", or why else a run marked running is gone
    copy: str | None = None  # how far the copy of its folder to Drive got: "complete", "behind", "dead", ...

    @property
    def ending(self) -> str:
        """How the run ended and why, in words.

        Examples:
            >>> colabkit.runs()[-1].ending
            'lost at step 7,100: VM recycled; run the same cell with resume=True to continue'
        """
        at = _progress.describe_step(self.last_step, self.checkpoint_step)
        at = f" {at}" if at else ""
        status, reason = self.status, self.reason
        if status == "finished":
            return f"finished{at}"
        if status == "failed":
            return f"failed{at}: {self.error}" if self.error else f"failed{at} (exit status {self.returncode})"
        if status == "stopped":
            return f"stopped by its budget{at}" + ("; resume=True continues it" if self.last_step or self.checkpoint_step else "")
        if status == "interrupted":
            why = _INTERRUPTED.get(reason or "", f"interrupted ({reason})" if reason else "interrupted")
            return f"{why}{at}"
        if status == "lost":
            return f"lost{at}: {self.lost_why or 'its processes are gone'}; run the same cell with resume=True to continue"
        if status == "running":
            return f"running{at}"
        return self.problem or status

    def row(self) -> tuple[str, str, str, str, str, str]:
        """Display strings: name, status, start, duration, peak GPU memory, how it ended."""
        started = self.started.astimezone().strftime("%Y-%m-%d %H:%M") if self.started else "n/a"
        duration = format_duration(self.duration_s) if self.duration_s is not None else "n/a"
        if self.peak_gpu_bytes is None:
            peak = "n/a"
        elif self.gpu_total_bytes:
            peak = f"{format_gib(self.peak_gpu_bytes)} / {format_gib(self.gpu_total_bytes)}"
        else:
            peak = format_gib(self.peak_gpu_bytes)
        return self.name, self.status, started, duration, peak, self.ending

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            parts.append(f"{f.name}={value!r}")
        return f"RunInfo({', '.join(parts)})"

    def _repr_html_(self) -> str:
        head = "".join(html_cell(html.escape(h), "th") for h in RunList._HEADER)
        cells = "".join(html_cell(html.escape(cell)) for cell in self.row())
        note = f"<p>{html.escape(self.problem)}</p>" if self.problem else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>{note}"


class RunList(Sequence[RunInfo]):
    """The runs of one project, oldest first; ``str()`` is a text table, a notebook shows an HTML one."""

    _HEADER = ("run", "status", "started", "duration", "peak GPU", "end")

    def __init__(self, folder: Path, items: list[RunInfo]) -> None:
        self.folder = folder
        self._items = items

    @overload
    def __getitem__(self, index: int) -> RunInfo: ...
    @overload
    def __getitem__(self, index: slice) -> list[RunInfo]: ...
    def __getitem__(self, index: int | slice) -> RunInfo | list[RunInfo]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[RunInfo]:
        return iter(self._items)

    def table(self) -> str:
        """The runs as aligned text, one line each."""
        if not self._items:
            return f"No runs yet in {self.folder}"
        rows = [self._HEADER, *(r.row() for r in self._items)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self._HEADER))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        if not self._items:
            return f"RunList(folder={str(self.folder)!r}, runs=[])"
        inner = "".join(f"    {item!r},\n" for item in self._items)
        return f"RunList(folder={str(self.folder)!r}, runs=[\n{inner}])"

    def _repr_html_(self) -> str:
        if not self._items:
            return f"<p>No runs yet in <code>{html.escape(str(self.folder))}</code></p>"
        head = "".join(html_cell(html.escape(h), "th") for h in self._HEADER)
        body = "".join(
            "<tr>" + "".join(html_cell(html.escape(cell)) for cell in r.row()) + "</tr>" for r in self._items
        )
        caption = f"<caption style='text-align:left'>runs in <code>{html.escape(str(self.folder))}</code></caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _name_time(name: str) -> float | None:
    """The start encoded in a run folder's name (``YYYYmmdd-HHMMSS-<script>``, local time), as a timestamp."""
    try:
        return datetime.strptime(name[:15], "%Y%m%d-%H%M%S").timestamp()
    except ValueError:
        return None


def _read(folder: Path, boot_id: str, now: datetime) -> tuple[tuple[float, float, str], RunInfo]:
    """The run in ``folder`` and its sort key: the second in its name, then the child's precise start, then the name."""
    fallback = _name_time(folder.name)
    key_unknown = (fallback if fallback is not None else float("inf"), 0.0, folder.name)
    try:
        summary = RunSummary.read(folder)
        if summary.status != "running" or summary.lost(boot_id):
            # a run over (or gone) whose last copy to Drive did not happen: this machine still has its folder
            from . import _mirror

            if _mirror.catch_up(folder) is not None:
                summary = RunSummary.read(folder)
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in DEAD_ERRNOS:
            raise _unusable(folder, exc) from exc
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return key_unknown, RunInfo(name=folder.name, path=folder, status="unknown", problem=f"summary.json: {problem}")
    info = _info(folder, summary, boot_id, now)
    # folder names (and "started") have one-second resolution: the child's create time orders runs started
    # within the same second, whatever their scripts are called
    if fallback is not None:
        first = fallback
    else:
        first = info.started.timestamp() if info.started is not None else float("inf")
    return (first, summary.pid_create_time or 0.0, folder.name), info


def _info(folder: Path, summary: RunSummary, boot_id: str, now: datetime, *, logs: Path | None = None) -> RunInfo:
    status = summary.status
    started = summary.started_at
    duration = summary.duration_s
    lost_why = None
    if summary.lost(boot_id):
        status = "lost"
        recycled = summary.boot_id and boot_id and summary.boot_id != boot_id
        lost_why = "VM recycled" if recycled else "its processes are gone"
    elif status == "running" and started is not None:
        duration = max(0.0, (now - started).total_seconds())
    error = getattr(summary, "error", None)
    if status == "failed" and not error:
        error = _last_line((logs or folder) / summary.log)
    copy = getattr(summary, "copy", None)
    return RunInfo(
        name=folder.name,
        path=folder,
        status=status,
        script=summary.script,
        started=started,
        ended=summary.ended_at,
        duration_s=duration,
        returncode=summary.returncode,
        peak_gpu_bytes=summary.peak_gpu_bytes,
        gpu_total_bytes=summary.gpu_total_bytes,
        reason=summary.reason,
        last_step=getattr(summary, "last_step", None),
        checkpoint_step=getattr(summary, "checkpoint_step", None),
        error=error,
        lost_why=lost_why,
        copy=copy.get("state") if isinstance(copy, dict) else None,
    )


def _last_line(log: Path) -> str | None:
    """The last line of output that is the script's (not colabkit's own ``[colabkit]`` lines), or ``None``."""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _ERROR_TAIL))
            data = f.read()
    except OSError:
        return None
    for raw in reversed(data.decode("utf-8", "replace").replace("\r", "\n").split("\n")):
        line = raw.strip()
        if line and not line.startswith("[colabkit]"):
            return line[:300]
    return None


def read_run(folder: Path, *, source: Path | None = None) -> RunInfo:
    """One run folder as :func:`runs` lists it (``status="unknown"`` with ``problem`` when unreadable); with
    ``source``, its files are read from there (the run's local folder, fresher than its copy on Drive).

    Raises:
        MountError: the folder is on a Drive that died.
    """
    folder = Path(folder)
    if source is None or Path(source) == folder:
        return _read(folder, _runtime.boot_id(), datetime.now(timezone.utc))[1]
    try:
        summary = RunSummary.read(Path(source))
    except (OSError, ValueError):
        return _read(folder, _runtime.boot_id(), datetime.now(timezone.utc))[1]
    return _info(folder, summary, _runtime.boot_id(), datetime.now(timezone.utc), logs=Path(source))


def _unusable(path: Path, exc: OSError) -> MountError:
    """The error for a runs folder that cannot be read: most often Drive's FUSE process died."""
    point = _mounts.mountpoint_of(path)
    if exc.errno in DEAD_ERRNOS:
        where = f"Drive at {point}" if point is not None and point != Path("/") else "Drive"
        return MountError(
            f"{where} is dead ([Errno {exc.errno}] {exc.strerror}): cannot read {path}",
            "Remount Drive with colabkit.mount(force=True) (`colabkit mount --force` in a terminal), then list the runs again.",
            mountpoint=point,
            reason="dead",
        )
    return MountError(
        f"Cannot read {path}: [Errno {exc.errno}] {exc.strerror or exc}",
        f"Check that {path} is readable; if it is on Drive, remount it with colabkit.mount(force=True) "
        "(`colabkit mount --force` in a terminal).",
        mountpoint=point,
        reason="io",
    )


def _is_dir(path: Path) -> bool:
    """``Path.is_dir`` that turns a dead Drive mount into a MountError instead of a raw OSError."""
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise _unusable(path, exc) from exc


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise _unusable(folder, exc) from exc


def _project_path(project: Any) -> Path:
    """The project folder: an open Project, a path, or a name resolved on Drive as colabkit.project() does.

    Unlike colabkit.project(), this never mounts Drive, changes the working directory or installs anything:
    a relative name is looked up under the Drive root (``"test"``, ``"MyDrive/test"``) when Drive or its
    local stand-in is there, else relative to the current directory.
    """
    if project is None:
        current = _project.current_project()
        if current is not None:
            return Path(current.path)
        try:
            return Path.cwd()
        except OSError as exc:  # the working directory was on a Drive that died
            raise _unusable(Path(os.environ.get("PWD", ".")), exc) from exc
    path = Path(os.fspath(getattr(project, "path", project))).expanduser()
    if path.is_absolute():
        return path
    found = _drive.find_mount()
    return _project.locate(path, found) if found is not None else path.absolute()


def runs(project: Any = None, *, log_dir: str = "runs") -> RunList:
    """List a project's runs with status, start, duration and peak GPU memory.

    Each run folder ``<project>/<log_dir>/<YYYYmmdd-HHMMSS>-<script>/`` is read from its
    ``summary.json``. A run still marked running whose VM rebooted or whose process is gone shows as
    ``lost``; a summary that cannot be read shows as ``unknown`` (never an exception).

    Args:
        project: the project: a ``Project``, an absolute folder, or a name such as ``"test"`` or
            ``"MyDrive/test"`` resolved under the Drive root like ``colabkit.project()`` does (relative
            to the current directory when no Drive is mounted); ``None`` means the open project, else
            the current directory. A folder that itself holds run folders is read directly. Nothing is
            mounted and the working directory does not change.
        log_dir: name of the runs folder inside the project.

    Returns:
        A :class:`RunList` (a sequence of :class:`RunInfo`, oldest first); ``print()`` it for a table.

    Raises:
        ProjectNotFound: ``project`` names a folder that does not exist.
        MountError: the folder is on a Drive mount that stopped answering (``reason="dead"``: its FUSE
            process died; ``"hung"``: no answer within the probe's deadline) or is not mounted (after
            ``flush()``); remount with ``colabkit.mount(force=True)``.

    Examples:
        >>> print(colabkit.runs("test"))
        run                      status    started           duration  peak GPU
        20250101-120000-train    finished  2025-01-01 12:00  41m12s    11.2 GiB / 15.0 GiB
        20250101-130500-train    lost      2025-01-01 13:05  n/a       n/a
        >>> colabkit.runs("test")[0]
        RunInfo(name='20250101-120000-train', path='/content/drive/MyDrive/test/runs/20250101-120000-train', status='finished', ...)
    """
    base = _project_path(project)
    _drive.require_mounted(base, purpose="list the runs")  # a hung Drive says so within seconds, never blocks
    if not _is_dir(base):
        raise ProjectNotFound(
            f"No project folder at {base}",
            "Pass the project folder that holds the runs folder: its name on Drive (colabkit.runs('test')) or "
            "its full path, or `colabkit runs PATH` in a terminal.",
            cli_hint="Pass the project folder that holds the runs folder: its name on Drive (colabkit runs test) "
            "or its full path.",
            path=base,
        )
    folder = base / log_dir
    if not _is_dir(folder) and any(os.path.isfile(c / "summary.json") for c in _children(base)):
        folder = base  # given the runs folder itself
    keyed: list[tuple[tuple[float, float, str], RunInfo]] = []
    if _is_dir(folder):
        boot_id = _runtime.boot_id()
        now = datetime.now(timezone.utc)
        for child in _children(folder):
            if child.name.startswith(".") or not _is_dir(child):
                continue
            keyed.append(_read(child, boot_id, now))
    keyed.sort(key=lambda pair: pair[0])
    return RunList(folder, [info for _, info in keyed])
