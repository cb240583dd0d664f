"""Re-attaching to a running run from another cell or Colab's terminal: its output from where it is now and its
live status, read from its folder (the VM-local one when the run writes locally first), never touching the run.

The run's loop keeps a small ``.live.json`` in that folder (:class:`LiveStatus`: the status line as the run's
own cell shows it, once a second, never fsynced, never copied to Drive); :func:`attach` follows ``output.log``
from its end (after the last few lines, for context), draws the output as the run's own cell would and the
status line under it, and returns when the run ends, or when Ctrl-C / Stop detaches it: the run goes on.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from . import _display, _files, _format, _history, _mirror, _runtime
from ._history import RunInfo
from ._summary import RunSummary
from .errors import ColabkitError

__all__ = ["LIVE", "Follower", "LiveStatus", "attach", "follow_dir"]

LIVE = ".live.json"
LIVE_EVERY_S = 1.0  # how often the run's loop rewrites .live.json
_LOOK_S = 1.0  # how often attach looks at the summary and the live status
_POLL_S = 0.1  # how often attach looks for new output
_STALE_S = 10.0  # a live status older than this says how old it is
_BACKLOG_BYTES = 64 * 1024  # what is read back from the log's end for the lines shown first


class LiveStatus:
    """``.live.json`` in a run folder: the run's status line and step for :func:`attach`, rewritten at most every
    ``LIVE_EVERY_S`` (a replace without fsync: it matters only while the run lives)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LIVE
        self._last = float("-inf")
        self.failed = False

    def update(self, text: str, now: float, *, step: int | None = None, force: bool = False) -> None:
        """Write the status ``text`` if a second has passed since the last write (``now`` on the run's clock)."""
        if self.failed or (not force and now - self._last < LIVE_EVERY_S):
            return
        self._last = now
        data = {"text": text, "at": time.time(), "pid": os.getpid(), "step": step}
        temp = self.path.with_name(f"{LIVE}.tmp-{os.getpid()}")
        try:
            temp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(temp, self.path)
        except OSError:  # the run goes on without it; attach shows the output alone
            self.failed = True
            with contextlib.suppress(OSError):
                temp.unlink()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def read_live(folder: Path) -> dict[str, Any] | None:
    data = _files.read_json(folder / LIVE)
    return data if data is not None and isinstance(data.get("text"), str) else None


class Follower:
    """``output.log`` read from where it is now: :meth:`backlog` is its last ``lines`` lines, :meth:`read` what
    was added since (decoded as the run's pump decodes it)."""

    def __init__(self, path: Path, lines: int = 20) -> None:
        self.path = path
        self.lines = lines
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0
        self._start()

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def _start(self) -> None:
        self.offset = self._size()

    def backlog(self) -> str:
        """The last ``lines`` lines before the position :meth:`read` starts from (a progress bar's last state each)."""
        if self.lines <= 0 or self.offset == 0:
            return ""
        start = max(0, self.offset - _BACKLOG_BYTES)
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                data = f.read(self.offset - start)
        except OSError:
            return ""
        text = data.decode("utf-8", "replace")
        if start > 0:
            text = text.split("\n", 1)[-1]  # a line cut in the middle
        keep = text.split("\n")
        ended = text.endswith("\n")
        if ended:
            keep = keep[:-1]
        keep = [line.rsplit("\r", 1)[-1] if line.rstrip("\r") else line for line in keep[-self.lines :]]
        return "\n".join(keep) + ("\n" if ended else "")

    def read(self) -> str:
        """What was written since the last read."""
        size = self._size()
        if size < self.offset:  # the file was replaced: start again at its end
            self.offset = size
            return ""
        if size == self.offset:
            return ""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError:
            return ""
        self.offset += len(data)
        return self._decoder.decode(data)


def follow_dir(info: RunInfo) -> Path:
    """Where a run's files are freshest: its local folder on this machine when it writes locally first, else its folder."""
    local = _mirror.local_dir(info.path)
    marker = _files.read_json(local / _mirror.MARKER)
    if marker is not None and marker.get("remote") == str(info.path) and (local / "summary.json").exists():
        return local
    return info.path


def _pick(run: Any, project: Any, log_dir: str) -> RunInfo:
    """The run to attach to: ``None`` is the newest running one; a name (or its unique start), a path, a RunInfo."""
    if isinstance(run, RunInfo):
        return _history.read_run(run.path)
    if run is not None and os.path.isabs(os.fspath(run)):
        return _history.read_run(Path(os.fspath(run)))
    try:
        listed = _history.runs(project, log_dir=log_dir)
    except ColabkitError:  # Drive is dead, hung or not mounted: a run writing on this VM's disk first goes on
        here = _running_here(_history._project_path(project) / log_dir)
        if run is None and here:
            return here[-1]
        raise
    if run is None:
        running = [r for r in listed if r.status == "running"] or _running_here(listed.folder)
        if not running:
            recent = ", ".join(f"{r.name} ({r.status})" for r in list(listed)[-3:]) or "none yet"
            raise ColabkitError(
                f"no run is running in {listed.folder} (latest: {recent})",
                "Start one with colabkit.run(...), or name the run to show: colabkit.attach('RUN'); "
                "colabkit.runs() lists them.",
                cli_hint="Start one with `colabkit run`, or name the run: `colabkit attach RUN`; `colabkit runs` lists them.",
            )
        return running[-1]
    name = os.fspath(run)
    exact = [r for r in listed if r.name == name]
    matches = exact or [r for r in listed if r.name.startswith(name) or r.name.endswith(name)]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(r.name for r in (matches or list(listed)[-5:])) or "none"
    raise ColabkitError(
        f"{'several runs match' if matches else 'no run matches'} {name!r} in {listed.folder}: {names}",
        "Pass the run's full name as colabkit.runs() lists it.",
        cli_hint="Pass the run's full name as `colabkit runs` lists it.",
    )


def _running_here(runs_folder: Path) -> list[RunInfo]:
    """Runs of ``runs_folder`` still running in their local folders on this machine (their Drive copy may not
    show them: Drive died, or has not caught up), oldest first."""
    try:
        locals_ = sorted(_mirror.local_base().iterdir())
    except OSError:
        return []
    found = []
    for local in locals_:
        marker = _files.read_json(local / _mirror.MARKER)
        remote = Path(str(marker.get("remote", ""))) if isinstance(marker, dict) else None
        if remote is None or remote.parent != runs_folder:
            continue
        info = _history.read_run(remote, source=local)  # named as users see it, read from this machine
        if info.status == "running":
            found.append(info)
    return found


def _over(folder: Path, boot_id: str) -> bool:
    """Whether the run in ``folder`` is over: its summary says so, or its processes are gone."""
    try:
        summary = RunSummary.read(folder)
    except (OSError, ValueError):
        return False
    return summary.status != "running" or summary.lost(boot_id)


def attach(
    run: Any = None,
    *,
    project: Any = None,
    log_dir: str = "runs",
    lines: int = 20,
    stop: threading.Event | None = None,
) -> RunInfo:
    """Show a running run's output and live status, from where it is now, until it ends or you detach.

    Works from another notebook cell, another notebook on the same VM or Colab's terminal (``colabkit attach``).
    Ctrl-C or Stop detaches: the run goes on, untouched.

    Args:
        run: the run: ``None`` for the newest running run of the project, its name as ``colabkit.runs()`` lists
            it (or the start of the name), its folder, or a ``RunInfo``.
        project: the project, as ``colabkit.runs()`` takes it (``None``: the open project, else the current folder).
        log_dir: the runs folder inside the project.
        lines: how many of its last lines to show first.
        stop: an event that detaches when set (for a caller of its own; Ctrl-C does it otherwise).

    Returns:
        The run as ``colabkit.runs()`` describes it when attach returned (``status`` ``"running"`` after a detach).

    Raises:
        ColabkitError: no run is running (``run=None``), or ``run`` names none, or several.

    Examples:
        >>> colabkit.attach()
        colabkit: attached to 20261201-101500-train (train.py, running 1h02m); Ctrl-C or Stop detaches, the run goes on
        iter 7100: loss 1.2345, time 101.2ms
        ...
        colabkit: detached from 20261201-101500-train; it goes on (colabkit.attach() shows it again)
    """
    info = _pick(run, project, log_dir)
    if info.status != "running":
        _display.note(f"colabkit: {info.name} is not running: {info.ending}")
        return info
    folder = follow_dir(info)
    boot_id = _runtime.boot_id()
    stop = stop or threading.Event()
    running = _format.format_duration(info.duration_s) if info.duration_s is not None else "n/a"
    _display.note(
        f"colabkit: attached to {info.name} ({info.script or 'script'}, running {running}); "
        "Ctrl-C or Stop detaches, the run goes on"
    )
    view = _display.OutputView()
    status = _display.StatusLine(view.mode)
    follower = Follower(folder / "output.log", lines)
    view.feed(follower.backlog())
    clock = time.monotonic
    last_look = float("-inf")
    detached = False
    try:
        while True:
            text = follower.read()
            if text:
                view.feed(text)
            now = clock()
            if now - last_look >= _LOOK_S:
                last_look = now
                live = read_live(folder)
                if live is not None:
                    age = time.time() - float(live.get("at") or 0)
                    line = live["text"] + (
                        f" · as of {_format.format_duration(age)} ago" if age > _STALE_S else ""
                    )
                    view.status = line
                    if status.mode != "terminal":
                        status.update(line, now)
                if _over(folder, boot_id):
                    view.feed(follower.read())
                    break
                if stop.is_set():
                    detached = True
                    break
            if view.due(now):
                view.render(now)
            stop.wait(_POLL_S)
    except KeyboardInterrupt:
        detached = True
    view.status = ""
    view.render(clock(), final=True)
    status.close()
    now_info = _history.read_run(info.path, source=folder)  # the local summary is the freshest
    if detached:
        again = "colabkit.attach()" if _runtime.display_mode() == "notebook" else "`colabkit attach`"
        _display.note(f"colabkit: detached from {info.name}; it goes on ({again} shows it again)")
    else:
        _display.note(f"colabkit: {info.name}: {now_info.ending}")
    return now_info
