"""The mount table: what is mounted where (``/proc/mounts``), whether a FUSE mount died or hangs (asked with a
deadline), who holds a mountpoint, the ``Mount`` record, unmounting, and the errors every Drive backend shares."""

from __future__ import annotations

import errno
import html
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import MountError

__all__ = [
    "DEAD_ERRNOS",
    "DRIVE_FSTYPE",
    "HUNG_REUSE_S",
    "OCAMLFUSE_FSTYPE",
    "PROBE_TIMEOUT_S",
    "Health",
    "Holder",
    "Mount",
    "MountEntry",
    "abort",
    "check_readonly",
    "cwd_problem",
    "detach",
    "entries_text",
    "entry",
    "forget",
    "health",
    "holders",
    "is_dead",
    "make_readonly",
    "mount_of",
    "mountpoint_of",
    "not_empty",
    "probe",
    "table",
    "unmount",
    "within",
]

log = logging.getLogger(__name__)

DRIVE_FSTYPE = "fuse.drive"
OCAMLFUSE_FSTYPE = "fuse.google-drive-ocamlfuse"
# what a FUSE mount whose daemon died answers: [Errno 107] Transport endpoint is not connected
DEAD_ERRNOS = (errno.ENOTCONN, errno.ECONNABORTED)
_MOUNTS = "/proc/mounts"
# a FUSE daemon that is stopped (not dead) blocks statvfs, stat and listdir with no timeout: every question
# to a mount goes to a child process that is killed after this long (colab-facts 7)
PROBE_TIMEOUT_S = 2.0
HUNG_REUSE_S = 5.0  # a "hung" verdict is reused this long: a second question would wait PROBE_TIMEOUT_S again
_TOOL_TIMEOUT_S = 10.0  # umount, fusermount: they never ask the FUSE daemon, but a bound costs nothing


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
    found = mount_of(path)
    return found.point if found is not None else None


def within(path: Path, point: Path) -> bool:
    """``path`` is ``point`` or below it, by name alone (nothing is asked of the file system)."""
    return path == point or point in path.parents


def mount_of(path: Path) -> MountEntry | None:
    """The topmost mount holding ``path`` (the deepest mountpoint at or above it), from the table alone."""
    best = None
    for e in table():
        if within(path, e.point) and (best is None or len(e.point.parts) >= len(best.point.parts)):
            best = e
    return best


class Health(NamedTuple):
    """What a mount answered: ``state`` is ``"live"``, ``"dead"`` (its FUSE process died: ``[Errno 107]``),
    ``"hung"`` (no answer within the probe's deadline), ``"gone"`` (no such folder) or ``"error"`` (another errno)."""

    state: str
    errno: int | None = None

    def describe(self) -> str:
        if self.state == "error" and self.errno is not None:
            return f"error ([Errno {self.errno}] {os.strerror(self.errno)})"
        return self.state


# statvfs always reaches the FUSE daemon (stat may be answered from the kernel's attribute cache); run with
# -I -S from "/" so that neither the child's start nor its sys.path ever touches the mount being asked
_PROBE_CODE = (
    "import os, sys\n"
    "try:\n os.statvfs(sys.argv[1])\n"
    "except OSError as exc:\n print(exc.errno or -1)\n"
    "else:\n print(0)\n"
)
_cache: dict[Path, tuple[float, Health]] = {}
_cache_lock = threading.Lock()


def _verdict(code: int | None) -> Health:
    if code is None:
        return Health("hung")
    if code == 0:
        return Health("live")
    if code in DEAD_ERRNOS:
        return Health("dead", code)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return Health("gone", code)
    return Health("error", code)


def _probe_in_thread(point: Path, timeout: float) -> Health:
    """The fallback when there is no interpreter to start: the thread stays blocked if the mount hangs."""
    found: list[int] = []

    def ask() -> None:
        try:
            os.statvfs(point)
            found.append(0)
        except OSError as exc:
            found.append(exc.errno or -1)

    worker = threading.Thread(target=ask, name="colabkit-mount-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return _verdict(found[0] if found else None)


def probe(point: Path, timeout: float = PROBE_TIMEOUT_S) -> Health:
    """Ask the mount at ``point`` (``statvfs``) in a child process killed after ``timeout`` seconds.

    A child, not a thread: a request to a stopped FUSE daemon blocks until the daemon answers, and only a
    process can be ended; a killed child leaves nothing behind (FUSE requests are killable).
    """
    if not sys.executable:
        return _probe_in_thread(point, timeout)
    try:
        child = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _PROBE_CODE, str(point)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
    except OSError:
        return _probe_in_thread(point, timeout)
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        try:
            child.communicate(timeout=_TOOL_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # pragma: no cover - a FUSE request that ignores SIGKILL
            log.warning("the probe of %s (pid %d) ignores SIGKILL", point, child.pid)
        return Health("hung")
    try:
        return _verdict(int(out.decode().strip() or "-1"))
    except ValueError:
        return Health("error")


def health(point: Path, *, max_age: float = 0.0) -> Health:
    """:func:`probe`, reusing a verdict at most ``max_age`` seconds old (a ``hung`` one up to :data:`HUNG_REUSE_S`)."""
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(point)
    if cached is not None:
        age = now - cached[0]
        if age <= max_age or (cached[1].state == "hung" and age <= HUNG_REUSE_S):
            return cached[1]
    found = probe(point)
    with _cache_lock:
        _cache[point] = (time.monotonic(), found)
    if found.state == "hung":
        log.warning("the mount at %s did not answer within %g s: it hangs", point, PROBE_TIMEOUT_S)
    return found


def remember(point: Path, found: Health) -> None:
    """Keep a verdict learnt another way (a lookup that did not come back in time: ``hung``)."""
    with _cache_lock:
        _cache[point] = (time.monotonic(), found)


def forget(point: Path | None = None) -> None:
    """Drop remembered verdicts (of ``point``, or all): after a mount or unmount there."""
    with _cache_lock:
        if point is None:
            _cache.clear()
        else:
            _cache.pop(point, None)


def reachable(path: Path, *, max_age: float = 5.0) -> bool:
    """Whether ``path`` can be asked without blocking: it is on no FUSE mount, or on one that answers."""
    found = mount_of(path)
    if found is None or not found.fstype.startswith("fuse"):
        return True
    return health(found.point, max_age=max_age).state == "live"


def is_dead(point: Path) -> bool:
    """A FUSE mount whose process died answers ``[Errno 107] Transport endpoint is not connected``."""
    return health(point).state == "dead"


def cwd_problem() -> str | None:
    """Why a child process started here would fail or hang on its first import (its ``sys.path[0]`` is the
    working directory): that folder is on a FUSE mount that is dead or hangs, or is gone. None when fine."""
    try:
        cwd = Path(os.getcwd())
    except OSError:
        return "the working directory no longer exists"
    found = mount_of(cwd)
    if found is None or not found.fstype.startswith("fuse"):
        return None
    state = health(found.point).state
    return None if state == "live" else f"the working directory {cwd} is on the mount at {found.point}, which is {state}"


class Holder(NamedTuple):
    """A process that keeps a mountpoint busy, and how: ``cwd``, ``root``, ``exe``, ``open file``, ``mapped file``."""

    pid: int
    how: str
    path: str
    cmdline: tuple[str, ...]

    def describe(self) -> str:
        cmd = " ".join(self.cmdline)[:80] or "?"
        return f"pid {self.pid} ({cmd}): {self.how} {self.path}"


def _read_cmdline(pid: str) -> tuple[str, ...]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ()
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def holders(point: Path) -> list[Holder]:
    """Processes whose working directory, root, program, open files or mapped files lie on the mount at ``point``.

    Read from ``/proc`` link names alone, which the kernel answers without asking the FUSE daemon, so a dead
    or hung mount is no obstacle. Processes of other users may be hidden from a non-root caller.
    """
    text = str(point)
    prefix = text.rstrip("/") + "/"

    def on_point(name: str) -> bool:
        name = name.removesuffix(" (deleted)")
        return name == text or name.startswith(prefix)

    found: list[Holder] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        seen: list[tuple[str, str]] = []
        for how in ("cwd", "root", "exe"):
            try:
                target = os.readlink(f"/proc/{pid}/{how}")
            except OSError:
                continue
            if on_point(target):
                seen.append((how, target))
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if on_point(target):
                seen.append(("open file", target))
                break
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and on_point(fields[5].rstrip("\n")):
                        seen.append(("mapped file", fields[5].rstrip("\n")))
                        break
        except OSError:
            pass
        if seen:
            cmd = _read_cmdline(pid)
            found.extend(Holder(int(pid), how, target, cmd) for how, target in seen[:1])
    return found


def _tool(cmd: list[str]) -> subprocess.CompletedProcess[str] | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL, cwd="/"
        )
    except subprocess.TimeoutExpired:
        log.warning("%s did not finish within %g s", " ".join(cmd), _TOOL_TIMEOUT_S)
        return None


def abort(point: Path) -> bool:
    """``umount -f``: cut a FUSE mount's connection (what drive.py does first); True when the mount is gone.

    A hung daemon then stops blocking whoever waits on it; if a process still holds the mountpoint the
    unmount fails and the mount stays, dead ([Errno 107]).
    """
    proc = _tool(["umount", "-f", str(point)])
    forget(point)
    return proc is not None and proc.returncode == 0


def detach(point: Path) -> bool:
    """``umount -l``: take a (dead) mount out of the tree even while processes still hold it; True on success."""
    proc = _tool(["umount", "-l", str(point)])
    forget(point)
    return proc is not None and proc.returncode == 0


def make_readonly(point: Path) -> bool:
    """Mark the mount at ``point`` read-only in the kernel (``mount -o remount,bind,ro``, needs root); True on success."""
    proc = _tool(["mount", "-o", "remount,bind,ro", str(point)])
    return proc is not None and proc.returncode == 0


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
        proc = _tool(cmd)
        if proc is None:
            continue
        if proc.returncode == 0:
            forget(point)
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
