"""Imports that outlive Drive: a ``sys.path`` entry on a FUSE mount that died or hangs is skipped, not fatal.

``project()`` puts the project folder on Drive first on ``sys.path`` (and a notebook's ``''`` entry means the
working directory, which is that folder too). When DriveFS dies, Python's own finder for that entry raises
``OSError: [Errno 107]`` from every later ``import`` of anything; when DriveFS hangs it blocks them forever.
:func:`install` puts a path hook in front of ``sys.path_hooks``: every entry on a FUSE mount gets a finder
that first asks the mount (with a deadline, the verdict reused for :data:`TRUST_S`) and answers "not here"
while the mount is dead, hung or gone, so the import goes on to the next entry. Python's own finder then
looks in the folder on a worker thread, waited for at most the probe's deadline: a mount that starts to hang
within the trusted second blocks that thread, not the import (the entry counts as hung from then on; the
thread ends when the mount answers or is unmounted). Entries elsewhere keep Python's own finders.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from importlib.machinery import (
    BYTECODE_SUFFIXES,
    EXTENSION_SUFFIXES,
    SOURCE_SUFFIXES,
    ExtensionFileLoader,
    FileFinder,
    SourceFileLoader,
    SourcelessFileLoader,
)
from pathlib import Path
from typing import Any

from . import _mounts

__all__ = ["TRUST_S", "install", "project_entry", "refresh", "remember_project"]

log = logging.getLogger(__name__)

TRUST_S = 1.0  # a "live" answer is trusted this long: one probe per second of importing, not one per import
_LOADERS = (
    (ExtensionFileLoader, EXTENSION_SUFFIXES),
    (SourceFileLoader, SOURCE_SUFFIXES),
    (SourcelessFileLoader, BYTECODE_SUFFIXES),
)
_said: set[tuple[Path, str]] = set()
_project_entry: Path | None = None  # the folder project() put first on sys.path
_busy = threading.local()  # set while this thread probes: imports made by the probe itself skip the check


class _Worker:
    """One daemon thread that runs lookups for the guarded finders, so that a hung one blocks it, not the caller."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, list[Any], threading.Event]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="colabkit-import-lookup", daemon=True).start()

    def _serve(self) -> None:
        _busy.on = True  # imports made on this thread (none are expected) never wait on the worker itself
        while True:
            job, out, done = self._jobs.get()
            try:
                out.append((True, job()))
            except BaseException as exc:  # handed back to the caller as it is
                out.append((False, exc))
            done.set()
            if _worker is not self:  # it was given up on while a hung mount held it: a fresh one serves now
                return

    def call(self, job: Any, timeout: float) -> list[Any]:
        """``[(ok, value_or_exception)]``, or ``[]`` when ``job`` did not finish within ``timeout`` seconds."""
        out: list[Any] = []
        done = threading.Event()
        self._jobs.put((job, out, done))
        done.wait(timeout)
        return out


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _bounded(job: Any, timeout: float) -> list[Any]:
    """Run ``job`` on the lookup worker (a new one when the last is stuck on a hung mount), waiting ``timeout``."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = _Worker()
        worker = _worker
    out = worker.call(job, timeout)
    if not out:
        with _worker_lock:
            if _worker is worker:
                _worker = None  # that thread is blocked in the hung mount; the next lookup gets a fresh one
    return out


class DriveEntryFinder:
    """The finder of one ``sys.path`` entry on a FUSE mount: Python's ``FileFinder`` behind a health check."""

    def __init__(self, path: str, point: Path) -> None:
        self.path = path
        self.point = point
        self._inner: FileFinder | None = None

    def __repr__(self) -> str:
        return f"DriveEntryFinder({self.path!r}, mount={str(self.point)!r})"

    def _usable(self) -> bool:
        if getattr(_busy, "on", False):
            return False
        _busy.on = True
        try:
            state = _mounts.health(self.point, max_age=TRUST_S).state
        finally:
            _busy.on = False
        if state == "live":
            return True
        self._say(state)
        return False

    def _say(self, state: str) -> None:
        if (self.point, state) not in _said:
            _said.add((self.point, state))
            log.warning(
                "imports skip %s on sys.path: the mount at %s is %s (remount with colabkit.mount(force=True))",
                self.path,
                self.point,
                state,
            )

    def find_spec(self, fullname: str, target: Any = None) -> Any:
        if not self._usable():
            return None
        if self._inner is None:
            self._inner = FileFinder(self.path, *_LOADERS)
        inner = self._inner
        out = _bounded(lambda: inner.find_spec(fullname, target), _mounts.PROBE_TIMEOUT_S)
        if not out:  # the mount started to hang since it was last asked
            _mounts.remember(self.point, _mounts.Health("hung"))
            self._say("hung")
            self._inner = None  # the blocked lookup keeps the old one; a fresh one once the mount answers
            return None
        ok, value = out[0]
        if ok:
            return value
        if isinstance(value, OSError) and value.errno in _mounts.DEAD_ERRNOS:  # died since the last probe
            _mounts.forget(self.point)
            return None
        raise value

    def invalidate_caches(self) -> None:
        if self._inner is not None:
            self._inner.invalidate_caches()


def _hook(path: str) -> DriveEntryFinder:
    """``sys.path_hooks`` entry: a guarded finder for a folder on a FUSE mount; others go to the next hook."""
    entry = _mounts.mount_of(Path(path)) if path else None
    if entry is None or not entry.fstype.startswith("fuse"):
        raise ImportError("not on a FUSE mount")
    return DriveEntryFinder(path, entry.point)


def install() -> None:
    """Guard every ``sys.path`` entry on a FUSE mount from now on (idempotent; the cached finders of such
    entries are dropped so that the next import asks the hook)."""
    if _hook not in sys.path_hooks:
        sys.path_hooks.insert(0, _hook)
    refresh()


def refresh(point: Path | None = None) -> None:
    """Forget the finders of entries on FUSE mounts (on ``point`` only, if given), e.g. after a remount."""
    fuse = [e.point for e in _mounts.table() if e.fstype.startswith("fuse")]
    if point is not None:
        fuse.append(point)
        _mounts.forget(point)
        _said.difference_update({k for k in _said if k[0] == point})
    for key in list(sys.path_importer_cache):
        if not key:
            continue
        where = Path(key)
        if any(_mounts.within(where, p) for p in fuse if point is None or p == point):
            finder = sys.path_importer_cache.get(key)
            if not isinstance(finder, DriveEntryFinder) or point is not None:
                sys.path_importer_cache.pop(key, None)


def remember_project(path: Path) -> None:
    """project() opened ``path`` (cwd, first on ``sys.path``): a remount gives it back its entry."""
    global _project_entry
    _project_entry = path


def project_entry() -> Path | None:
    """The folder the last project() put first on ``sys.path``, or None."""
    return _project_entry
