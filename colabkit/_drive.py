"""``mount()``, ``find_mount()`` and ``flush()``: Google Drive as a folder, through the ``drive`` (google.colab)
or ``local`` backend here or the ``ocamlfuse`` one (``_ocamlfuse``), checked against the mount table."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from . import _mounts, _runtime
from ._mounts import DRIVE_FSTYPE, OCAMLFUSE_FSTYPE, Mount
from .errors import MountError

__all__ = ["METHODS", "Mount", "find_mount", "flush", "mount"]

log = logging.getLogger(__name__)

METHODS = ("auto", "drive", "ocamlfuse", "local")
RETRY_TIMEOUT_S = 600.0  # drive.mount's second try: a big My Drive root needs minutes to list

_active: Mount | None = None  # the mount made by the last mount() of this process


# -- defaults --------------------------------------------------------------------------------------


def _default_mountpoint(method: str) -> Path:
    if method == "drive":
        return _runtime.sysroot() / "content/drive"
    if method == "ocamlfuse":
        if _runtime.detect_runtime().is_colab:
            return _runtime.sysroot() / "content/gdrive"
        return Path.home() / "gdrive"
    # absolute now: project() changes the working directory, and a relative folder would move with it
    return Path(os.environ.get("COLABKIT_DRIVE") or "~/colabkit-drive").expanduser().absolute()


def _resolve_method(method: str) -> str:
    if method not in METHODS:
        raise MountError(
            f"unknown mount method {method!r}",
            f"Use one of {', '.join(repr(m) for m in METHODS)}.",
            method=method,
            reason="method",
        )
    if method == "auto":
        return "drive" if _runtime.detect_runtime().is_colab else "local"
    return method


# -- public API ------------------------------------------------------------------------------------


def mount(
    method: str = "auto",
    mountpoint: str | os.PathLike[str] | None = None,
    *,
    readonly: bool = False,
    force: bool = False,
    timeout: float = 120,
    service_account: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    client_id: str | None = None,
    label: str | None = None,
) -> Mount:
    """Mount Google Drive (or the local stand-in) once; calling again returns the live mount at once.

    Args:
        method: ``"auto"`` (``drive`` on Colab, else ``local``), ``"drive"`` (google.colab.drive),
            ``"ocamlfuse"`` (google-drive-ocamlfuse: a second account, Shared Drives, Kaggle, any Linux
            box) or ``"local"`` (the folder ``$COLABKIT_DRIVE``, default ``~/colabkit-drive``).
        mountpoint: Where to mount; default ``/content/drive`` (drive), ``/content/gdrive`` or
            ``~/gdrive`` (ocamlfuse), ``$COLABKIT_DRIVE`` (local).
        readonly: Mount read-only.
        force: Remount even if a live mount is there.
        timeout: Seconds to wait for Drive; a ``drive`` timeout is retried once with 600 s.
        service_account: ocamlfuse only: a service account key file (``$COLABKIT_OCAMLFUSE_SERVICE_ACCOUNT``).
        state_dir: ocamlfuse only: a pre-authorized ``~/.gdfuse/<label>/`` folder to copy
            (``$COLABKIT_OCAMLFUSE_STATE_DIR``).
        client_id: ocamlfuse only: your own OAuth client id for ``-headless`` sign-in
            (``$COLABKIT_OCAMLFUSE_CLIENT_ID``); the secret and the code are asked with getpass.
        label: ocamlfuse only: the account label (``$COLABKIT_OCAMLFUSE_LABEL``, default ``default``).

    Returns:
        The Mount; ``Mount.root`` holds your My Drive files.

    Raises:
        MountError: Drive refused or failed; ``reason`` names the case (``credentials``: the popup was
            closed or another account was used; ``timeout``: thousands of items in the My Drive root;
            ``not_empty``: files in the mountpoint, a leftover 'My Drive' folder too; ``not_colab``:
            method="drive" off Colab; ``readonly``: a live mount is read-write and read-only was asked, or
            the reverse (pass force=True); ``missing_tool``: google-drive-ocamlfuse cannot be installed here;
            ``no_auth``).

    Examples:
        >>> colabkit.mount()
        Mount(method='drive', mountpoint='/content/drive', root='/content/drive/MyDrive')
        >>> colabkit.mount("local")
        Mount(method='local', mountpoint='/root/colabkit-drive', root='/root/colabkit-drive/MyDrive')
    """
    global _active
    method = _resolve_method(method)
    point = (
        Path(mountpoint).expanduser().absolute() if mountpoint is not None else _default_mountpoint(method)
    )
    if method == "drive":
        result = _mount_drive(point, readonly=readonly, force=force, timeout=timeout)
    elif method == "ocamlfuse":
        from . import _ocamlfuse

        result = _ocamlfuse.mount(
            point,
            readonly=readonly,
            force=force,
            timeout=timeout,
            service_account=service_account,
            state_dir=state_dir,
            client_id=client_id,
            label=label,
        )
    else:
        result = _mount_local(point, readonly=readonly)
    _active = result
    return result


def find_mount() -> Mount | None:
    """The live Drive mount, or None; a probe that never raises.

    Looks at the mount made by this process, then ``fuse.drive`` at ``/content/drive``, then (off Colab
    only) the local stand-in folder if it exists; what it finds counts as this process's mount from then
    on. A dead mount (``Transport endpoint is not connected``) is not live: None.

    Examples:
        >>> colabkit.find_mount()
        Mount(method='drive', mountpoint='/content/drive', root='/content/drive/MyDrive')
    """
    global _active
    try:
        if _active is not None and _is_live(_active):
            return _active
        point = _default_mountpoint("drive")
        entry = _mounts.entry(point)
        if entry and entry.fstype == DRIVE_FSTYPE and not _mounts.is_dead(point):
            _active = Mount("drive", point, point / "MyDrive", entry.readonly)
            return _active
        if _runtime.detect_runtime().is_colab:
            # after flush() unmounted Drive, a stand-in folder would send project() to the wrong place
            return None
        folder = _default_mountpoint("local")
        if (folder / "MyDrive").is_dir():
            # remembered: a relative $COLABKIT_DRIVE must not move when project() changes the cwd
            _active = Mount("local", folder, folder / "MyDrive")
            return _active
    except Exception:  # a probe: report nothing rather than fail
        log.debug("find_mount failed", exc_info=True)
    return None


def flush() -> None:
    """Make Drive writes durable: drive → ``flush_and_unmount``; ocamlfuse → unmount; local → ``os.sync``.

    On Colab, writes sit in a local cache until DriveFS pushes them; ``flush_and_unmount`` is the only call
    that guarantees they reached Drive, and it unmounts: ``mount()`` works again afterwards.

    Raises:
        MountError: Drive could not push the pending writes or unmount (files still open, DriveFS stuck);
            ``reason="dead"``: the mount died (``Transport endpoint is not connected``), so nothing could be
            pushed: remount with ``colabkit.mount(force=True)``, then flush again.

    Examples:
        >>> colabkit.flush()
    """
    global _active
    dead = _dead_mount()
    if dead is not None:
        raise _dead_error(dead)
    current = find_mount()
    if current is None:
        log.info("flush: no Drive mount, nothing to flush")
        return
    if current.method != "local":
        _leave(current.mountpoint)
    if current.method == "drive":
        from . import _colab

        _colab.drive_flush_and_unmount()
    elif current.method == "ocamlfuse":
        os.sync()
        _mounts.unmount(current.mountpoint)
    else:
        os.sync()
        return
    if _active is not None and _active.mountpoint == current.mountpoint:
        _active = None


def _dead_mount() -> Mount | None:
    """The Drive mount of this process (or ``fuse.drive`` at ``/content/drive``) if its FUSE process died."""
    candidates = []
    if _active is not None and _active.method != "local":
        candidates.append(_active)
    point = _default_mountpoint("drive")
    candidates.append(Mount("drive", point, point / "MyDrive"))
    for m in candidates:
        entry = _mounts.entry(m.mountpoint)
        want = DRIVE_FSTYPE if m.method == "drive" else OCAMLFUSE_FSTYPE
        if entry is not None and entry.fstype == want and _mounts.is_dead(m.mountpoint):
            return m
    return None


def _dead_error(m: Mount) -> MountError:
    again = "colabkit.mount(force=True)" if m.method == "drive" else "colabkit.mount('ocamlfuse', force=True)"
    return MountError(
        f"Drive at {m.mountpoint} is dead ([Errno 107] Transport endpoint is not connected), so its pending "
        "writes could not be pushed",
        f"Remount with {again}, then call colabkit.flush(). Files written before the mount died may still "
        "sit in the Drive client's local cache and be uploaded after the remount: keep this runtime until "
        "flush() succeeds, and check that your latest files are on Drive.",
        mountpoint=m.mountpoint,
        method=m.method,
        reason="dead",
    )


def _leave(point: Path) -> None:
    """Step out of the mount (setup() changed into the project on Drive): a busy mount cannot unmount."""
    try:
        cwd = Path.cwd()
    except OSError:  # the cwd of a dead mount
        cwd = None
    if cwd is None or cwd == point or point in cwd.parents:
        log.info("leaving %s so it can be unmounted; the working directory is now %s", point, point.parent)
        os.chdir(point.parent)


def _is_live(m: Mount) -> bool:
    if m.method == "local":
        return m.root.is_dir()
    entry = _mounts.entry(m.mountpoint)
    want = DRIVE_FSTYPE if m.method == "drive" else OCAMLFUSE_FSTYPE
    return entry is not None and entry.fstype == want and not _mounts.is_dead(m.mountpoint)


# -- backends --------------------------------------------------------------------------------------


def _mount_local(folder: Path, *, readonly: bool) -> Mount:
    root = folder / "MyDrive"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MountError(
            f"cannot create the local Drive folder {root}: {exc.strerror}",
            "Set COLABKIT_DRIVE to a folder you can write, or pass mountpoint=... .",
            mountpoint=folder,
            method="local",
            reason="local",
        ) from exc
    return Mount("local", folder, root, readonly)


def _mount_drive(point: Path, *, readonly: bool, force: bool, timeout: float) -> Mount:
    from . import _colab

    entry = _mounts.entry(point)
    force_remount = force
    if entry is not None and entry.fstype == DRIVE_FSTYPE:
        if _mounts.is_dead(point):
            # DriveFS died under a live kernel (hours into a run): the mountpoint answers ENOTCONN
            log.warning("Drive at %s is dead (Transport endpoint is not connected): remounting", point)
            force_remount = True
        elif not force:
            _mounts.check_readonly(point, "drive", entry.readonly, readonly)
            return Mount("drive", point, point / "MyDrive", entry.readonly)
    elif not point.is_symlink() and point.is_dir() and any(point.iterdir()):
        # drive.mount takes a leftover 'My Drive' folder for a live mount, prints "already mounted" and
        # returns; files there would make force_remount fail with "must not already contain files"
        leftover = (point / "My Drive").exists()
        why = " ('My Drive' there is a plain folder, not Drive: nothing is mounted)" if leftover else ""
        raise _mounts.not_empty(point, "drive", why)
    attempt = functools.partial(_colab.drive_mount, point, force_remount=force_remount, readonly=readonly)
    try:
        attempt(timeout_ms=int(timeout * 1000))
    except MountError as exc:
        if exc.reason != "timeout":
            raise
        retry = max(RETRY_TIMEOUT_S, timeout)
        log.warning("Drive timed out after %gs at %s; trying once more with %gs", timeout, point, retry)
        try:
            attempt(timeout_ms=int(retry * 1000))
        except MountError as again:
            if again.reason != "timeout":
                raise
            raise MountError(
                f"Drive timed out twice at {point} ({timeout:g} s, then {retry:g} s) while reading the My Drive root",
                again.hint,
                mountpoint=point,
                method="drive",
                reason="timeout",
            ) from again
    entry = _mounts.entry(point)
    if entry is None or entry.fstype != DRIVE_FSTYPE:
        raise MountError(
            f"drive.mount returned, but nothing is mounted at {point} (the mount table has no {DRIVE_FSTYPE} there)",
            f"Look for files that appeared in {point} and move them out, then run the cell again; if it keeps "
            "failing use Runtime → Restart session.",
            mountpoint=point,
            method="drive",
            reason="failed",
        )
    return Mount("drive", point, point / "MyDrive", entry.readonly)
