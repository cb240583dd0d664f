"""A run's folder: creating it, the checks that keep a script from starting where nothing could be kept, and the
files the run reads back from it.

Before the script starts, the folder for run folders must be reachable and writable and its disk must
have room: a full disk, a Drive whose FUSE process died, or a read-only folder each give one
``ColabkitError`` (a ``MountError`` for a dead Drive) that says what happened and the fix for that errno,
never a bare ``OSError``, and the script never starts.
"""

from __future__ import annotations

import errno
import re
import time
from pathlib import Path

from . import _disk, _files
from .errors import ColabkitError, MountError

__all__ = ["check_root", "folder_error", "framework_report", "new_run_dir"]


def folder_error(exc: OSError, folder: Path, doing: str) -> ColabkitError:
    """The error for ``doing`` (``"create a run folder"``) in ``folder`` failing with ``exc``, with the fix for its errno."""
    found = _disk.problem(exc, folder)
    message = f"cannot {doing} in {folder}: {found.what}"
    if found.kind == "dead":
        return MountError(message, found.fix, mountpoint=folder, reason="dead", cli_hint=found.cli_fix)
    return ColabkitError(message, found.fix, cli_hint=found.cli_fix)


def check_root(root: Path) -> None:
    """Make sure run folders can be made in ``root``: it exists (created if needed) and its disk is not full.

    Raises:
        ColabkitError: ``root`` is a file, cannot be created, or its disk has less than ``MIN_FREE_BYTES`` free.
        MountError: ``root`` is on a Drive that is not mounted (after ``flush()``), dead or hung: asked with a
            deadline, so a hung Drive raises within seconds instead of blocking the run's start.
    """
    from . import _drive

    _drive.require_mounted(root, purpose="create the run folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # root itself, or a folder above it, is a file
        raise ColabkitError(
            f"cannot create a run folder in {root}: {exc.filename} is a file",
            f"Pass log_dir= a folder, e.g. run(..., log_dir='{_disk.local_runs()}')",
            cli_hint=f"Pass --log-dir a folder: colabkit run --log-dir {_disk.local_runs()} ...",
        ) from exc
    except OSError as exc:
        raise folder_error(exc, root, "create a run folder") from exc
    free = _disk.free_bytes(root)
    if free is not None and free < _disk.MIN_FREE_BYTES:
        full = OSError(errno.ENOSPC, "No space left on device", str(root))
        raise folder_error(full, root, "create a run folder") from None


def new_run_dir(root: Path, stem: str) -> Path:
    """A new, empty run folder ``<root>/<YYYYmmdd-HHMMSS>-<stem>`` (``-2``, ``-3``... if taken).

    Raises:
        ColabkitError: ``root`` cannot be written; the hint fits the cause (``log_dir``, free space, remount).
    """
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9._-]', '_', stem)}"
    try:
        for n in range(1, 1000):
            candidate = root / (base if n == 1 else f"{base}-{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:
        raise folder_error(exc, root, "create a run folder") from exc
    raise ColabkitError(f"could not create a run folder in {root}", f"Remove old run folders from {root}")


def framework_report(path: Path) -> tuple[int | None, int | None]:
    """The child's torch peaks (allocated, reserved) on its busiest GPU, from ``.framework.json``; never raises."""
    peak = reserved = None
    try:
        devices = (_files.read_json(path) or {}).get("devices") or []
        if devices:
            busiest = max(devices, key=lambda d: d.get("max_memory_allocated") or 0)
            peak, reserved = int(busiest["max_memory_allocated"]), int(busiest["max_memory_reserved"])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        path.unlink()
    except OSError:  # none written, or the folder went away with it
        pass
    return peak, reserved


def keep_unsaved(data: bytes, run_name: str) -> Path | None:
    """Write output that ``output.log`` lacks to ``$COLABKIT_CACHE/unsaved/<run>.log`` (``~/.cache/colabkit``: this
    VM's own disk, not the one that failed), so a terminal user can read it too; ``None`` when nothing is
    there or it cannot be written either."""
    if not data:
        return None
    path = _files.cache_dir() / "unsaved" / f"{run_name}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _files.replacing(path, "wb") as out:
            out.write(data)
    except OSError:
        return None
    return path
