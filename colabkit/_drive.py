"""``mount()``, ``find_mount()``, ``flush()``, ``status()`` and ``require_mounted()``: Google Drive as a folder,
through the ``drive`` (google.colab) or ``local`` backend here or the ``ocamlfuse`` one (``_ocamlfuse``), checked
against the mount table and asked with a deadline (a hung DriveFS never blocks these calls)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import _mounts, _runtime
from ._mounts import DRIVE_FSTYPE, OCAMLFUSE_FSTYPE, Mount
from .errors import MountError

if TYPE_CHECKING:
    from ._remount import Attempts

__all__ = ["METHODS", "DriveStatus", "Mount", "find_mount", "flush", "mount", "require_mounted", "status"]

log = logging.getLogger(__name__)

METHODS = ("auto", "drive", "ocamlfuse", "local")
OCAMLFUSE_TIMEOUT_S = 120.0  # google-drive-ocamlfuse's sign-in and mount, when timeout=None
_MIN_RETRY_S = 1.0  # a retry with less time left than this would only fail again

_active: Mount | None = None  # the mount made by the last mount() of this process
_known: dict[Path, str] = {}  # mountpoint -> method of every Drive mount this process made: writes there need it


class DriveStatus(NamedTuple):
    """What Drive is doing: ``state`` is ``"live"``, ``"dead"`` (its FUSE process died), ``"hung"`` (it did not
    answer within the probe's deadline), ``"error"`` (it answered with another error) or ``"not_mounted"``.
    ``mount`` is the mount in question (``None`` when nothing is mounted)."""

    state: str
    mount: Mount | None = None
    errno: int | None = None


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
    timeout: float | None = None,
    service_account: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    client_id: str | None = None,
    label: str | None = None,
) -> Mount:
    """Mount Google Drive (or the local stand-in) once; calling again returns the live mount at once.

    A mount whose Drive client died (``[Errno 107]``) is remounted in this one call, from any working
    directory: colabkit steps out of it, ends the leftover shells of google.colab's drive.py that hold it,
    takes the dead mount away, mounts again and steps back into the same folder (and the open project is
    on ``sys.path`` again). A hung Drive client (one that does not answer) is reported, and restarted with
    ``force=True``.

    Args:
        method: ``"auto"`` (``drive`` on Colab, else ``local``), ``"drive"`` (google.colab.drive),
            ``"ocamlfuse"`` (google-drive-ocamlfuse: a second account, Shared Drives, Kaggle, any Linux
            box) or ``"local"`` (the folder ``$COLABKIT_DRIVE``, default ``~/colabkit-drive``).
        mountpoint: Where to mount; default ``/content/drive`` (drive), ``/content/gdrive`` or
            ``~/gdrive`` (ocamlfuse), ``$COLABKIT_DRIVE`` (local).
        readonly: Mount read-only (for ``drive``, colabkit marks the mount read-only itself when DriveFS
            does not).
        force: Remount even if a live mount is there (refused while other processes use it).
        timeout: Seconds for the whole call, every try included. ``None``: for ``drive`` a first try of
            120 s and, after a time-out, one retry of 600 s (about 12 min at most); 120 s for ``ocamlfuse``.
            A number bounds the call: the first ``drive`` try gets half of it (at most 120 s), a retry the rest.
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
            closed or another account was used; ``timeout``: ``timeout`` ran out, often thousands of items
            in the My Drive root; ``not_empty``: files in the mountpoint, a leftover 'My Drive' folder too;
            ``not_colab``: method="drive" off Colab; ``readonly``: a live mount is read-write and read-only
            was asked, or the reverse (pass force=True); ``hung``: the Drive client does not answer (pass
            force=True to restart it); ``busy``: force=True while other processes use the mount;
            ``missing_tool``: google-drive-ocamlfuse cannot be installed here; ``no_auth``; ``no_browser``:
            nobody can answer the consent request, in a kernel driven by google-colab-cli or in a shell on the
            VM: the hint names that front end's own way to mount, after which this call finds it; in VS Code the
            Colab extension asks in a dialog of its own, and a dismissed dialog is ``credentials``).

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
            timeout=OCAMLFUSE_TIMEOUT_S if timeout is None else timeout,
            service_account=service_account,
            state_dir=state_dir,
            client_id=client_id,
            label=label,
        )
    else:
        result = _mount_local(point, readonly=readonly)
    _active = result
    if result.method != "local":
        from . import _pathguard

        _known[result.mountpoint] = result.method
        _pathguard.install()
    return result


def status() -> DriveStatus:
    """Whether Drive is mounted and answering; a probe that never raises and never waits long on a hung mount.

    Looks at the mount made by this process, then ``fuse.drive`` at ``/content/drive``, then (off Colab
    only) the local stand-in folder if it exists.

    Examples:
        >>> colabkit._drive.status()
        DriveStatus(state='hung', mount=Mount(method='drive', mountpoint='/content/drive', ...), errno=None)
    """
    try:
        return _status()
    except Exception:  # a probe: report nothing rather than fail
        log.debug("status failed", exc_info=True)
        return DriveStatus("not_mounted")


def _status() -> DriveStatus:
    candidates = []
    if _active is not None and _active.method != "local":
        candidates.append(_active)
    point = _default_mountpoint("drive")
    if not any(c.mountpoint == point for c in candidates):
        candidates.append(Mount("drive", point, point / "MyDrive"))
    for m in candidates:
        entry = _mounts.entry(m.mountpoint)
        want = DRIVE_FSTYPE if m.method == "drive" else OCAMLFUSE_FSTYPE
        if entry is None or entry.fstype != want:
            continue
        found = Mount(m.method, m.mountpoint, m.root, entry.readonly)
        h = _mounts.health(m.mountpoint)
        state = h.state if h.state in ("live", "dead", "hung") else "error"
        return DriveStatus(state, found, h.errno)
    if _active is not None and _active.method == "local":
        return DriveStatus("live", _active) if _active.root.is_dir() else DriveStatus("not_mounted")
    if _runtime.detect_runtime().is_colab:
        # after flush() unmounted Drive, a stand-in folder would send project() to the wrong place
        return DriveStatus("not_mounted")
    folder = _default_mountpoint("local")
    if (folder / "MyDrive").is_dir():
        return DriveStatus("live", Mount("local", folder, folder / "MyDrive"))
    return DriveStatus("not_mounted")


def find_mount() -> Mount | None:
    """The live Drive mount, or None; a probe that never raises (a dead or hung mount is not live: None).

    Looks at the mount made by this process, then ``fuse.drive`` at ``/content/drive``, then (off Colab
    only) the local stand-in folder if it exists; what it finds counts as this process's mount from then
    on. Asking a mount takes at most a few seconds, even when its Drive client hangs.

    Examples:
        >>> colabkit.find_mount()
        Mount(method='drive', mountpoint='/content/drive', root='/content/drive/MyDrive')
    """
    global _active
    st = status()
    if st.state != "live" or st.mount is None:
        return None
    # remembered: a relative $COLABKIT_DRIVE must not move when project() changes the cwd
    _active = st.mount
    return _active


def flush() -> None:
    """Make Drive writes durable: drive → ``flush_and_unmount``; ocamlfuse → unmount; local → ``os.sync``.

    On Colab, writes sit in a local cache until DriveFS pushes them; ``flush_and_unmount`` is the only call
    that guarantees they reached Drive, and it unmounts: ``mount()`` works again afterwards. The working
    directory moves out of the mount first (to its parent) and stays there.

    Raises:
        MountError: Drive could not push the pending writes or unmount (files still open, DriveFS stuck);
            ``reason="dead"``: the mount died (``Transport endpoint is not connected``), so nothing could be
            pushed: remount with ``colabkit.mount(force=True)``, then flush again; ``reason="hung"``: the Drive
            client does not answer (it is not touched: wait, or restart it with ``colabkit.mount(force=True)``).

    Examples:
        >>> colabkit.flush()
    """
    global _active
    from . import _remount

    st = status()
    if st.state in ("dead", "hung", "error") and st.mount is not None:
        raise _remount.broken_error(
            st.state, st.mount, st.errno, "its pending writes could not be pushed", "call colabkit.flush()"
        )
    current = st.mount
    if st.state == "not_mounted" or current is None:
        log.info("flush: no Drive mount, nothing to flush")
        return
    if current.method == "local":
        os.sync()
        return
    with _remount.stepped_out(current.mountpoint):  # a busy mount cannot unmount; the cwd stays outside
        try:
            if current.method == "drive":
                from . import _colab

                _colab.drive_flush_and_unmount()
            else:
                os.sync()
                _mounts.unmount(current.mountpoint)
        except MountError as exc:
            others = _remount.others_holding(current.mountpoint)
            if others:
                raise _remount.busy_error(current.mountpoint, current.method, others) from exc
            raise
        finally:
            _mounts.forget(current.mountpoint)
    if _active is not None and _active.mountpoint == current.mountpoint:
        _active = None


def _drive_points() -> dict[Path, str]:
    """Where Drive is (or was) mounted, with its method: what this process mounted, and on Colab the defaults."""
    points = {}
    if _runtime.detect_runtime().is_colab:
        points = {_default_mountpoint("ocamlfuse"): "ocamlfuse", _default_mountpoint("drive"): "drive"}
    points.update(_known)
    return points


def require_mounted(path: str | os.PathLike[str], *, purpose: str = "write there") -> None:
    """Refuse to touch ``path`` when it lies under a Drive mountpoint that is not mounted, dead or hung.

    After ``flush()`` the mountpoint is a plain folder of the VM's disk: files written there are not on
    Drive, hide under the next mount and make it fail ("must not already contain files"). The mount is
    asked with a deadline, so a hung Drive raises within a few seconds instead of blocking the write.

    Raises:
        MountError: ``reason`` is ``"not_mounted"``, ``"dead"``, ``"hung"`` or ``"error"``; the hint says
            to mount again.

    Examples:
        >>> colabkit._drive.require_mounted("/content/drive/MyDrive/test/runs", purpose="create the run folder")
    """
    target = Path(os.path.abspath(os.fspath(path)))
    holder = _mounts.mount_of(target)
    if holder is not None and (holder.fstype in (DRIVE_FSTYPE, OCAMLFUSE_FSTYPE) or holder.point in _known):
        method = "drive" if holder.fstype == DRIVE_FSTYPE else "ocamlfuse"
        root = holder.point / "MyDrive" if method == "drive" else holder.point
        h = _mounts.health(holder.point)
        if h.state == "live":
            return
        from . import _remount

        state = h.state if h.state in ("dead", "hung") else "error"
        m = Mount(method, holder.point, root, holder.readonly)
        raise _remount.broken_error(state, m, h.errno, f"colabkit cannot {purpose} ({target})", "try again")
    points = _drive_points()
    for point in sorted(points, key=lambda p: len(p.parts), reverse=True):
        if not _mounts.within(target, point):
            continue
        if holder is not None and _mounts.within(holder.point, point):
            continue  # something else is mounted inside the mountpoint: not ours to judge
        method = points[point]
        again = "colabkit.mount()" if method == "drive" else "colabkit.mount('ocamlfuse')"
        raise MountError(
            f"Drive is not mounted at {point} (colabkit.flush() unmounts it), so colabkit will not {purpose} "
            f"({target}): the files would land on this VM's own disk under the mountpoint, not on Drive, and "
            "make the next mount fail",
            f"Mount Drive again with {again}, then try again.",
            mountpoint=point,
            method=method,
            reason="not_mounted",
            cli_hint="Mount Drive again with `colabkit mount`"
            + ("" if method == "drive" else " --method ocamlfuse")
            + ", then try again.",
        )


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


def _mount_drive(point: Path, *, readonly: bool, force: bool, timeout: float | None) -> Mount:
    from . import _remount

    attempts = _remount.Attempts(timeout)
    entry = _mounts.entry(point)
    if entry is not None and entry.fstype != DRIVE_FSTYPE:
        raise MountError(
            f"{point} is already a mount point of another file system ({entry.fstype})",
            f"Unmount it first (fusermount3 -u {point}) or pass another mountpoint.",
            mountpoint=point,
            method="drive",
            reason="busy",
        )
    if entry is None:
        if not point.is_symlink() and point.is_dir() and any(point.iterdir()):
            # drive.mount takes a leftover 'My Drive' folder for a live mount, prints "already mounted" and
            # returns; files there would make force_remount fail with "must not already contain files"
            leftover = (point / "My Drive").exists()
            why = " ('My Drive' there is a plain folder, not Drive: nothing is mounted)" if leftover else ""
            raise _mounts.not_empty(point, "drive", why)
        _needs_a_person(point)
        return _drive_mount(point, attempts, force_remount=force, readonly=readonly)
    state = _mounts.health(point).state
    current = Mount("drive", point, point / "MyDrive", entry.readonly)
    if state == "live" and not force:
        _mounts.check_readonly(point, "drive", entry.readonly, readonly)
        return current
    if state == "hung" and not force:
        raise _remount.hung_error(current, "colabkit cannot use it")
    _needs_a_person(point)
    if state != "live":
        # DriveFS died (hours into a run) or hangs: the mountpoint answers ENOTCONN or nothing at all
        log.warning("Drive at %s is %s: remounting", point, state)
    with _remount.stepped_out(point) as back:
        remounted = False
        try:
            if state == "live":
                others = _remount.others_holding(point)
                if others:
                    raise _remount.busy_error(point, "drive", others)
            else:
                _remount.clear(point, state, "drive")
            result = _drive_mount(point, attempts, force_remount=True, readonly=readonly)
            remounted = True
        finally:
            back(quiet=not remounted)
    _remount.restore_imports(point)
    return result


_NOBODY = {
    "headless": "no browser answers this Colab kernel (google-colab-cli or another kernel client)",
    "terminal": "this is no notebook kernel but a shell on the Colab VM",
}


def _needs_a_person(point: Path) -> None:
    """Before drive.mount asks for consent: where nobody can answer, fail now with the fix; in VS Code, say
    what its dialog will ask (the Colab extension answers the request itself)."""
    from . import _display, _frontend

    found = _frontend.front_end()
    if found == "vscode":
        _display.note(f"colabkit: mounting Drive at {point}: {_frontend.VSCODE_CONSENT}")
        return
    if not _frontend.answers_consent(found):
        api, cli = _frontend.mount_fix(found, str(point))
        raise MountError(
            f"Drive cannot be mounted from here: drive.mount asks a browser for consent, and {_NOBODY[found]}",
            api,
            cli_hint=cli,
            mountpoint=point,
            method="drive",
            reason="no_browser",
        )


def _drive_mount(point: Path, attempts: Attempts, *, force_remount: bool, readonly: bool) -> Mount:
    """``drive.mount`` within the budget of ``attempts``: one retry after a time-out, then the advice."""
    from . import _colab

    def call(timeout_ms: int) -> None:
        _colab.drive_mount(point, force_remount=force_remount, timeout_ms=timeout_ms, readonly=readonly)

    shares: list[float] = []
    share = attempts.first_share()
    while True:
        shares.append(share)
        fired, error = attempts.run(share, call)
        if fired:
            _tidy(point)
        if not fired and error is None:
            break
        timed_out = fired or (isinstance(error, MountError) and error.reason == "timeout")
        if not timed_out:
            assert error is not None
            raise error
        left = attempts.left()
        if len(shares) == 2 or left < _MIN_RETRY_S:
            raise _timeout_error(point, attempts, shares, drivefs=not fired) from error
        log.warning(
            "Drive timed out after %.3g s at %s; trying once more with %.3g s", share, point, left
        )
        share = left
    _mounts.forget(point)
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
    if readonly and not entry.readonly:
        _enforce_readonly(point)
        entry = _mounts.entry(point) or entry
    return Mount("drive", point, point / "MyDrive", entry.readonly)


def _tidy(point: Path) -> None:
    """After a try that was ended: a mount it left behind (its DriveFS is gone) is taken away."""
    from . import _remount

    entry = _mounts.entry(point)
    if entry is not None and entry.fstype == DRIVE_FSTYPE:
        _remount.clear(point, "dead", "drive")


def _timeout_error(point: Path, attempts: Attempts, shares: list[float], *, drivefs: bool) -> MountError:
    tries = [f"{attempts.drivefs_ms(s) / 1000:.3g} s" for s in shares]
    said = f"timed out twice ({tries[0]}, then {tries[1]})" if len(tries) == 2 else f"timed out ({tries[0]})"
    budget = f"timeout={attempts.total:.3g} s in all"
    if drivefs:
        hint = (
            "My Drive's root probably holds thousands of items: move them into a few folders at "
            "drive.google.com, then run the cell again. Restarting the runtime (Runtime → Restart session) also "
            f"helps, and so does more time: colabkit.mount(timeout=900). More: {_FAQ}"
        )
        cli_hint = hint.replace("colabkit.mount(timeout=900)", "colabkit mount --timeout 900")
        what = "while reading the My Drive root"
    elif _runtime.detect_runtime().front_end == "vscode":  # its consent dialog, not a popup, went unanswered
        from . import _frontend

        hint = cli_hint = f"VS Code's consent dialog was not answered in time. {_frontend.mount_fix('vscode', str(point))[0]}"
        what = "before Drive was mounted"
    else:
        hint = (
            "Drive did not answer in time: run the cell again, and answer the sign-in popup if one appears. "
            "If it keeps happening use Runtime → Restart session, or give it more time: colabkit.mount(timeout=900)."
        )
        cli_hint = hint.replace("colabkit.mount(timeout=900)", "colabkit mount --timeout 900")
        what = "before Drive was mounted"
    return MountError(
        f"Drive {said} at {point} {what} ({budget})",
        hint,
        mountpoint=point,
        method="drive",
        reason="timeout",
        cli_hint=cli_hint,
    )


_FAQ = "https://research.google.com/colaboratory/faq.html#drive-timeout"


def _enforce_readonly(point: Path) -> None:
    """readonly=True: DriveFS got ``read_only_mode``, but the mount is read-write; mark it read-only here."""
    if _mounts.make_readonly(point):
        entry = _mounts.entry(point)
        if entry is not None and entry.readonly:
            log.info("Drive at %s marked read-only (DriveFS had mounted it read-write)", point)
            return
    why = "it needs root" if os.geteuid() != 0 else "mount -o remount,bind,ro failed"
    raise MountError(
        f"Drive is mounted at {point}, but read-write: DriveFS did not make it read-only, and colabkit could not "
        f"either ({why})",
        "Use it as it is with colabkit.mount() (read-write; it stays mounted), or for a read-only Drive mount "
        "with google-drive-ocamlfuse: colabkit.mount('ocamlfuse', readonly=True, service_account=...).",
        mountpoint=point,
        method="drive",
        reason="readonly_unsupported",
    )
