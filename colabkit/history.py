"""Run history: every run folder's ``summary.json`` as one table, with runs whose VM vanished shown as lost."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from . import _procs
from .errors import ProjectNotFound
from .runtime import format_duration, sysroot

if TYPE_CHECKING:
    import argparse

__all__ = ["RunInfo", "RunList", "runs"]

_STATUSES = ("running", "finished", "failed", "interrupted")


@dataclass(frozen=True)
class RunInfo:
    """One run folder. ``status`` is ``finished``, ``failed``, ``interrupted``, ``running``, ``lost`` or ``unknown``.

    ``lost`` means the summary still says running, but its VM rebooted or its process is gone.
    ``duration_s`` of a running run counts up to now. Bytes are ``int``; missing facts are ``None``.
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
    problem: str | None = None  # why the summary could not be read

    def row(self) -> tuple[str, str, str, str, str]:
        """Display strings: name, status, start, duration, peak GPU memory."""
        started = self.started.astimezone().strftime("%Y-%m-%d %H:%M") if self.started else "n/a"
        duration = format_duration(self.duration_s) if self.duration_s is not None else "n/a"
        if self.peak_gpu_bytes is None:
            peak = "n/a"
        elif self.gpu_total_bytes:
            peak = f"{_gib(self.peak_gpu_bytes)} / {_gib(self.gpu_total_bytes)}"
        else:
            peak = _gib(self.peak_gpu_bytes)
        return self.name, self.status, started, duration, peak


class RunList(Sequence[RunInfo]):
    """The runs of one project, oldest first; prints as a table in a terminal and in a notebook."""

    _HEADER = ("run", "status", "started", "duration", "peak GPU")

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

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        if not self._items:
            return f"<p>No runs yet in <code>{html.escape(str(self.folder))}</code></p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._HEADER)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in r.row()) + "</tr>" for r in self._items
        )
        caption = f"<caption>runs in <code>{html.escape(str(self.folder))}</code></caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _boot_id() -> str:
    try:
        return (sysroot() / "proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _read(folder: Path, boot_id: str, now: datetime) -> RunInfo:
    try:
        data = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return RunInfo(name=folder.name, path=folder, status="unknown", problem=f"summary.json: {problem}")
    status = data.get("status")
    if status not in _STATUSES:
        status = "unknown"
    started = _parse_time(data.get("started"))
    ended = _parse_time(data.get("ended"))
    duration = _float_or_none(data.get("duration_s"))
    if status == "running":
        theirs = data.get("boot_id")
        rebooted = bool(theirs and boot_id and theirs != boot_id)
        if rebooted or not _procs.alive(data.get("pid"), data.get("pid_create_time")):
            status = "lost"
        elif started is not None:
            duration = max(0.0, (now - started).total_seconds())
    return RunInfo(
        name=folder.name,
        path=folder,
        status=status,
        script=data.get("script") if isinstance(data.get("script"), str) else None,
        started=started,
        ended=ended,
        duration_s=duration,
        returncode=_int_or_none(data.get("returncode")),
        peak_gpu_bytes=_int_or_none(data.get("peak_gpu_bytes")),
        gpu_total_bytes=_int_or_none(data.get("gpu_total_bytes")),
    )


def _project_path(project: Any) -> Path:
    if project is None:
        try:
            from . import projects

            current = projects.current()
        except (ImportError, AttributeError):
            current = None
        return Path(current.path) if current is not None else Path.cwd()
    path = getattr(project, "path", project)
    return Path(os.fspath(path)).expanduser().absolute()


def runs(project: Any = None, *, log_dir: str = "runs") -> RunList:
    """List a project's runs with status, start, duration and peak GPU memory.

    Each run folder ``<project>/<log_dir>/<YYYYmmdd-HHMMSS>-<script>/`` is read from its
    ``summary.json``. A run still marked running whose VM rebooted or whose process is gone shows as
    ``lost``; a summary that cannot be read shows as ``unknown`` (never an exception).

    Args:
        project: the project (a ``Project``, a folder path, or ``None`` for the open project, else the
            current directory). A folder that itself holds run folders is read directly.
        log_dir: name of the runs folder inside the project.

    Returns:
        A :class:`RunList` (a sequence of :class:`RunInfo`, oldest first).

    Raises:
        ProjectNotFound: ``project`` names a folder that does not exist.

    Examples:
        >>> colabkit.runs()
        run                      status    started           duration  peak GPU
        20250101-120000-train    finished  2025-01-01 12:00  41m12s    11.2 GiB / 15.0 GiB
        20250101-130500-train    lost      2025-01-01 13:05  n/a       n/a
    """
    base = _project_path(project)
    if not base.is_dir():
        raise ProjectNotFound(
            f"No project folder at {base}",
            "Pass the project folder that holds the runs folder, e.g. colabkit.runs('/content/drive/MyDrive/test').",
            path=base,
        )
    folder = base / log_dir
    if not folder.is_dir() and any(base.glob("*/summary.json")):
        folder = base  # given the runs folder itself
    items: list[RunInfo] = []
    if folder.is_dir():
        boot_id = _boot_id()
        now = datetime.now(timezone.utc)
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            if child.name.startswith(".") or not child.is_dir():
                continue
            items.append(_read(child, boot_id, now))
    return RunList(folder, items)


def _cli_configure_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", nargs="?", default=None, metavar="PROJECT_DIR",
                        help="project folder (default: the current directory)")
    parser.add_argument("--log-dir", default="runs", help="runs folder inside the project (default: runs)")


def _cli_runs(args: argparse.Namespace) -> int:
    print(runs(args.project, log_dir=args.log_dir).table())
    return 0
