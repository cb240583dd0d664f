"""The mount table: what is mounted where (``/proc/mounts``), whether a FUSE mount died, the ``Mount`` record,
and what every Drive backend needs to unmount and to refuse a mountpoint that is not theirs."""

from __future__ import annotations

import errno
import html
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import MountError

__all__ = [
    "DEAD_ERRNOS",
    "DRIVE_FSTYPE",
    "OCAMLFUSE_FSTYPE",
    "Mount",
    "MountEntry",
    "check_readonly",
    "entries_text",
    "entry",
    "is_dead",
    "mountpoint_of",
    "not_empty",
    "table",
    "unmount",
]

DRIVE_FSTYPE = "fuse.drive"
OCAMLFUSE_FSTYPE = "fuse.google-drive-ocamlfuse"
# what a FUSE mount whose daemon died answers: [Errno 107] Transport endpoint is not connected
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)
_MOUNTS = "/proc/mounts"


@dataclass(frozen=True)
class Mount:
    """Where Drive is: ``root`` is the folder that holds your My Drive files.

    ``method`` is ``"drive"`` (google.colab, ``root`` = ``<mountpoint>/MyDrive``), ``"ocamlfuse"``
    (``root`` = ``mountpoint``) or ``"local"`` (a local folder standing in, ``root`` = ``<folder>/MyDrive``).
    """

    method: str
    mountpoint: Path
    root: Path
    readonly: bool = False

    def __repr__(self) -> str:
        ro = ", readonly=True" if self.readonly else ""
        return f"Mount(method={self.method!r}, mountpoint='{self.mountpoint}', root='{self.root}'{ro})"

    def _repr_html_(self) -> str:
        ro = " (read-only)" if self.readonly else ""
        return (
            f"<b>Drive</b> {html.escape(self.method)} at <code>{html.escape(str(self.mountpoint))}</code>{ro}, "
            f"files in <code>{html.escape(str(self.root))}</code>"
        )

    def describe(self) -> str:
        """One line, e.g. ``drive at /content/drive, files in /content/drive/MyDrive``."""
        ro = " (read-only)" if self.readonly else ""
        return f"{self.method} at {self.mountpoint}{ro}, files in {self.root}"


class MountEntry(NamedTuple):
    """One line of the mount table."""

    point: Path
    fstype: str
    options: frozenset[str]

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as ``\\040``-style octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def table() -> list[MountEntry]:
    """Every mount, in the order mounted (later lines cover earlier ones at the same point); empty if unreadable."""
    try:
        with open(_MOUNTS, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) > 3:
            found.append(MountEntry(Path(_unescape(fields[1])), fields[2], frozenset(fields[3].split(","))))
    return found


def entry(point: Path) -> MountEntry | None:
    """The topmost mount at exactly ``point``, or None."""
    found = None
    for e in table():
        if e.point == point:
            found = e
    return found


def mountpoint_of(path: Path) -> Path | None:
    """The mount that holds ``path``, from the table alone (a dead mount cannot be asked)."""
    best = None
    for e in table():
        if (e.point == path or e.point in path.parents) and (best is None or len(e.point.parts) > len(best.parts)):
            best = e.point
    return best


def is_dead(point: Path) -> bool:
    """A FUSE mount whose process died answers ``[Errno 107] Transport endpoint is not connected``."""
    try:
        # statfs always asks the FUSE process; stat may be answered from the kernel's attribute cache
        os.statvfs(point)
    except OSError as exc:
        return exc.errno in DEAD_ERRNOS
    return False


def unmount(point: Path) -> None:
    """Unmount a FUSE mount: ``fusermount3 -u``, ``fusermount -u``, then a lazy ``umount -l``.

    Raises:
        MountError: every way failed (files open on it, or a shell's cwd inside it); ``reason="unmount"``.
    """
    errors = []
    for cmd in (
        ["fusermount3", "-u", str(point)],
        ["fusermount", "-u", str(point)],
        ["umount", "-l", str(point)],
    ):
        if shutil.which(cmd[0]) is None:
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return
        errors.append(proc.stderr.strip())
    raise MountError(
        f"could not unmount {point}: {'; '.join(e for e in errors if e) or 'no fusermount3/umount found'}",
        f"Close files and terminals using {point} (cd out of it), then call colabkit.flush() again.",
        mountpoint=point,
        reason="unmount",
    )


def check_readonly(point: Path, method: str, mounted_ro: bool, want_ro: bool) -> None:
    """A live mount is returned as it is only if it is read-only exactly when asked."""
    if mounted_ro == want_ro:
        return
    have, want = ("read-only", "read-write") if mounted_ro else ("read-write", "read-only")
    raise MountError(
        f"Drive is already mounted {have} at {point}, and readonly={want_ro} asks for {want}",
        f"Pass force=True to remount it {want}: colabkit.mount({method!r}, readonly={want_ro}, force=True).",
        mountpoint=point,
        method=method,
        reason="readonly",
    )


def entries_text(folder: Path | str | None, limit: int = 5) -> str:
    """The first names in ``folder``, quoted: ``'a', 'b' and 3 more`` (``(unreadable)`` if it cannot be listed)."""
    try:
        names = sorted(os.listdir(folder)) if folder else []
    except OSError:
        return "(unreadable)"
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def not_empty(point: Path, method: str, why: str = "") -> MountError:
    """The error for files in a mountpoint: named, never moved or deleted."""
    return MountError(
        f"the mountpoint {point} is not empty: it holds {entries_text(point)}{why}",
        f"Move those files out of {point} yourself (colabkit never deletes or moves them), or pass another "
        "folder: colabkit.mount(mountpoint=...).",
        mountpoint=point,
        method=method,
        reason="not_empty",
    )
