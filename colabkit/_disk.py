"""What a failing write to a run's folder means, by errno: what happened and the fix that fits it.

A full local disk (ENOSPC) needs free space, not a remount; a Drive whose FUSE process died (ENOTCONN,
EIO, ...) needs a remount; a deleted folder needs neither. Every place that writes the run folder
(``output.log``, ``metrics.csv``, ``summary.json``, the folder itself) says its failure through
:func:`problem`, in the words of the API (``log_dir=``) or of the command line (``--log-dir``).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from . import _format, _mounts, _runtime

__all__ = ["MIN_FREE_BYTES", "Problem", "free_bytes", "local_runs", "problem"]

MIN_FREE_BYTES = 1024**2  # a run folder on a disk with less free than this is refused before the script starts

FULL = (errno.ENOSPC, errno.EDQUOT)
DEAD = (*_mounts.DEAD_ERRNOS, errno.EIO, errno.ESTALE)
GONE = (errno.ENOENT, errno.ENOTDIR)
READONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class Problem:
    """A write that failed: ``kind`` (``full``, ``dead``, ``gone``, ``readonly``, ``other``), what happened, the fix."""

    kind: str
    what: str  # "no space left on /content (0 B free)"
    fix: str  # an instruction, for Python callers
    cli_fix: str  # the same for the command line
    errno: int | None

    @property
    def recoverable(self) -> bool:
        """Whether writing may work again later in the same run (space freed, Drive remounted)."""
        return self.kind in ("full", "dead")


def free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the file system of ``path``; ``None`` when it cannot be asked."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _is_fuse(point: Path | None) -> bool:
    if point is None:
        return False
    found = _mounts.entry(point)
    return found is not None and found.fstype.startswith("fuse")


def problem(exc: OSError, path: Path) -> Problem:
    """What the failure ``exc`` of a write under ``path`` means, and what to do.

    Examples:
        >>> problem(OSError(errno.ENOSPC, "No space left on device"), Path("/content/runs")).what
        'no space left on / (0 B free): [Errno 28] No space left on device'
    """
    code = exc.errno
    said = f"[Errno {code}] {exc.strerror}" if code is not None and exc.strerror else str(exc)
    point = _mounts.mountpoint_of(path)
    where = str(point) if point is not None else str(path)
    if code in FULL:
        free = free_bytes(path)
        return Problem(
            "full",
            f"no space left on {where} ({_format.format_bytes(free)} free): {said}",
            f"Free space on that disk (delete old checkpoints or run folders; `df -h {where}` shows what is left), "
            "or pass log_dir= a folder on another disk",
            f"Free space on that disk (delete old checkpoints or run folders; `df -h {where}` shows what is left), "
            "or pass --log-dir a folder on another disk",
            code,
        )
    if code in DEAD:
        if code in _mounts.DEAD_ERRNOS or _is_fuse(point):
            return Problem(
                "dead",
                f"Drive at {where} is not connected any more (its FUSE process died): {said}",
                "Remount Drive with colabkit.mount(force=True), or pass log_dir= a folder on the local disk",
                "Remount Drive with `colabkit mount --force`, or pass --log-dir a folder on the local disk",
                code,
            )
        return Problem(
            "dead",
            f"the disk under {where} fails: {said}",
            "Check the disk (`dmesg`), or pass log_dir= a folder on another disk",
            "Check the disk (`dmesg`), or pass --log-dir a folder on another disk",
            code,
        )
    if code in GONE:
        return Problem(
            "gone",
            f"{path} was deleted: {said}",
            "Leave the run folder in place while the run goes on, or pass log_dir= a folder nothing cleans up",
            "Leave the run folder in place while the run goes on, or pass --log-dir a folder nothing cleans up",
            code,
        )
    if code in READONLY:
        return Problem(
            "readonly",
            exc.strerror or said,
            f"Pass log_dir= a writable folder, e.g. run(..., log_dir='{local_runs()}')",
            f"Pass --log-dir a writable folder: colabkit run --log-dir {local_runs()} ...",
            code,
        )
    return Problem(
        "other",
        said,
        f"Pass log_dir= another folder, e.g. run(..., log_dir='{local_runs()}')",
        f"Pass --log-dir another folder: colabkit run --log-dir {local_runs()} ...",
        code,
    )


def local_runs() -> str:
    """A folder on this machine's own disk for run folders, as a hint names it: the VM's disk on Colab."""
    rt = _runtime.detect_runtime()
    if rt.is_colab:
        return "/content/runs"
    if rt.is_kaggle:
        return "/kaggle/working/runs"
    return "~/runs"
