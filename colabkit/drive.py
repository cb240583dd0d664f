"""Google Drive as a folder: the ``drive`` (google.colab), ``ocamlfuse`` and ``local`` backends, checked
against the mount table, and ``flush()`` to make writes durable."""

from __future__ import annotations

import errno
import getpass
import html
import logging
import os
import re
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import runtime
from .errors import MountError

if TYPE_CHECKING:
    import argparse

__all__ = ["Mount", "find_mount", "flush", "mount"]

log = logging.getLogger(__name__)

METHODS = ("auto", "drive", "ocamlfuse", "local")
RETRY_TIMEOUT_S = 600.0  # drive.mount's second try: a big My Drive root needs minutes to list
_DRIVE_FSTYPE = "fuse.drive"
_OCAMLFUSE_FSTYPE = "fuse.google-drive-ocamlfuse"
_PPA = "ppa:alessandro-strada/ppa"
_NO_AUTH_HINT = (
    "Pass one of: service_account='key.json' (a service account key; share the Drive folders with its e-mail), "
    "state_dir='gdfuse-state/' (a ~/.gdfuse/<label>/ folder authorized once on a machine with a browser), or "
    "client_id='....apps.googleusercontent.com' (your own OAuth client; you paste a code). See docs/drive.md."
)

_active: Mount | None = None  # the mount made by the last mount() of this process


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


# -- the mount table -------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as ``\\040``-style octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _table_entry(point: Path) -> tuple[str, set[str]] | None:
    """``(fstype, options)`` of the topmost mount at ``point``, or None."""
    found = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and _unescape(fields[1]) == str(point):
                    found = (fields[2], set(fields[3].split(",")))
    except OSError:
        return None
    return found


def _is_dead(point: Path) -> bool:
    """A FUSE mount whose process died answers ``[Errno 107] Transport endpoint is not connected``."""
    try:
        os.stat(point)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def _unmount(point: Path) -> None:
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


def _entries(folder: Path, limit: int = 5) -> str:
    names = sorted(os.listdir(folder))
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _not_empty(point: Path, method: str) -> MountError:
    return MountError(
        f"the mountpoint {point} is not empty: it holds {_entries(point)}",
        f"Move those files out of {point} yourself (colabkit never deletes or moves them), or pass another "
        "folder: colabkit.mount(mountpoint=...).",
        mountpoint=point,
        method=method,
        reason="not_empty",
    )


# -- defaults --------------------------------------------------------------------------------------


def _default_mountpoint(method: str) -> Path:
    if method == "drive":
        return runtime.sysroot() / "content/drive"
    if method == "ocamlfuse":
        if runtime.detect().is_colab:
            return runtime.sysroot() / "content/gdrive"
        return Path.home() / "gdrive"
    return Path(os.environ.get("COLABKIT_DRIVE") or "~/colabkit-drive").expanduser()


def _resolve_method(method: str) -> str:
    if method not in METHODS:
        raise MountError(
            f"unknown mount method {method!r}",
            f"Use one of {', '.join(repr(m) for m in METHODS)}.",
            method=method,
            reason="method",
        )
    if method == "auto":
        return "drive" if runtime.detect().is_colab else "local"
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
            ``not_empty``: files in the mountpoint; ``not_colab``: method="drive" off Colab;
            ``missing_tool``: google-drive-ocamlfuse cannot be installed here; ``no_auth``).

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
        result = _mount_ocamlfuse(
            point,
            readonly=readonly,
            force=force,
            timeout=timeout,
            service_account=service_account or os.environ.get("COLABKIT_OCAMLFUSE_SERVICE_ACCOUNT"),
            state_dir=state_dir or os.environ.get("COLABKIT_OCAMLFUSE_STATE_DIR"),
            client_id=client_id or os.environ.get("COLABKIT_OCAMLFUSE_CLIENT_ID"),
            label=label or os.environ.get("COLABKIT_OCAMLFUSE_LABEL") or "default",
        )
    else:
        result = _mount_local(point, readonly=readonly)
    _active = result
    return result


def find_mount() -> Mount | None:
    """The live Drive mount, or None; a probe that never raises.

    Looks at the mount made by this process, then ``fuse.drive`` at ``/content/drive``, then the local
    stand-in folder if it exists.

    Examples:
        >>> colabkit.drive.find_mount()
        Mount(method='drive', mountpoint='/content/drive', root='/content/drive/MyDrive')
    """
    try:
        if _active is not None and _is_live(_active):
            return _active
        point = _default_mountpoint("drive")
        entry = _table_entry(point)
        if entry and entry[0] == _DRIVE_FSTYPE and not _is_dead(point):
            return Mount("drive", point, point / "MyDrive", "ro" in entry[1])
        folder = _default_mountpoint("local")
        if (folder / "MyDrive").is_dir():
            return Mount("local", folder, folder / "MyDrive")
    except Exception:  # a probe: report nothing rather than fail
        log.debug("find_mount failed", exc_info=True)
    return None


def flush() -> None:
    """Make Drive writes durable: drive → ``flush_and_unmount``; ocamlfuse → unmount; local → ``os.sync``.

    On Colab, writes sit in a local cache until DriveFS pushes them; ``flush_and_unmount`` is the only call
    that guarantees they reached Drive, and it unmounts: ``mount()`` works again afterwards.

    Raises:
        MountError: Drive could not push the pending writes or unmount (files still open, DriveFS stuck).

    Examples:
        >>> colabkit.flush()
    """
    global _active
    current = find_mount()
    if current is None:
        log.info("flush: no Drive mount, nothing to flush")
        return
    if current.method != "local":
        _leave(current.mountpoint)
    if current.method == "drive":
        from . import colab

        colab.drive_flush_and_unmount()
    elif current.method == "ocamlfuse":
        os.sync()
        _unmount(current.mountpoint)
    else:
        os.sync()
        return
    if _active is not None and _active.mountpoint == current.mountpoint:
        _active = None


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
    entry = _table_entry(m.mountpoint)
    want = _DRIVE_FSTYPE if m.method == "drive" else _OCAMLFUSE_FSTYPE
    return entry is not None and entry[0] == want and not _is_dead(m.mountpoint)


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
    from . import colab

    entry = _table_entry(point)
    force_remount = force
    if entry is not None and entry[0] == _DRIVE_FSTYPE:
        if _is_dead(point):
            # DriveFS died under a live kernel (hours into a run): the mountpoint answers ENOTCONN
            log.warning("Drive at %s is dead (Transport endpoint is not connected): remounting", point)
            force_remount = True
        elif not force:
            return Mount("drive", point, point / "MyDrive", "ro" in entry[1])
    try:
        colab.drive_mount(
            point, force_remount=force_remount, timeout_ms=int(timeout * 1000), readonly=readonly
        )
    except MountError as exc:
        if exc.reason != "timeout":
            raise
        retry = max(RETRY_TIMEOUT_S, timeout)
        log.warning("Drive timed out after %gs at %s; trying once more with %gs", timeout, point, retry)
        try:
            colab.drive_mount(
                point, force_remount=force_remount, timeout_ms=int(retry * 1000), readonly=readonly
            )
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
    entry = _table_entry(point)
    if entry is None or entry[0] != _DRIVE_FSTYPE:
        raise MountError(
            f"drive.mount returned, but nothing is mounted at {point} (the mount table has no {_DRIVE_FSTYPE} there)",
            f"A folder named 'My Drive' inside {point} fools drive.mount: call colabkit.mount(force=True).",
            mountpoint=point,
            method="drive",
            reason="failed",
        )
    return Mount("drive", point, point / "MyDrive", "ro" in entry[1])


# -- ocamlfuse -------------------------------------------------------------------------------------


def _os_ids() -> set[str]:
    ids: set[str] = set()
    try:
        text = (runtime.sysroot() / "etc/os-release").read_text()
    except OSError:
        return ids
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip('"').split())
    return ids


def _ensure_ocamlfuse() -> str:
    """Path of google-drive-ocamlfuse, installed from its PPA on Colab/Ubuntu when missing."""
    exe = shutil.which("google-drive-ocamlfuse")
    if exe:
        return exe
    steps = [
        ["add-apt-repository", "-y", _PPA],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "google-drive-ocamlfuse"],
    ]
    if shutil.which("add-apt-repository") is None:
        steps.insert(0, ["apt-get", "install", "-y", "-qq", "software-properties-common"])
    command = " && ".join(" ".join(s) for s in steps)
    ubuntu = "ubuntu" in _os_ids() or runtime.detect().is_colab
    if not ubuntu:
        raise MountError(
            "google-drive-ocamlfuse is not installed, and colabkit installs it only on Colab or Ubuntu",
            "Install it with your system's package manager, e.g. on Ubuntu: sudo add-apt-repository "
            f"{_PPA} && sudo apt-get update && sudo apt-get install google-drive-ocamlfuse; elsewhere: "
            "opam install google-drive-ocamlfuse. Then call colabkit.mount('ocamlfuse') again.",
            method="ocamlfuse",
            reason="missing_tool",
        )
    if os.geteuid() != 0:
        raise MountError(
            "google-drive-ocamlfuse is not installed, and installing it needs root",
            f"Run in a terminal: sudo sh -c '{command}', then call colabkit.mount('ocamlfuse') again.",
            method="ocamlfuse",
            reason="missing_tool",
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for step in steps:
        log.info("installing google-drive-ocamlfuse: %s", " ".join(step))
        proc = subprocess.run(step, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise MountError(
                f"installing google-drive-ocamlfuse failed at {' '.join(step)!r} (exit {proc.returncode}):\n{tail}",
                f"Check the network, then run it yourself: {command}",
                method="ocamlfuse",
                reason="missing_tool",
            )
    exe = shutil.which("google-drive-ocamlfuse")
    if not exe:
        raise MountError(
            "apt-get finished, but google-drive-ocamlfuse is still not on PATH",
            f"Run it yourself and read its output: {command}",
            method="ocamlfuse",
            reason="missing_tool",
        )
    return exe


def _private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)


def _write_config(config: Path, values: dict[str, str]) -> None:
    """Set keys in an ocamlfuse config file, created 0600 before any secret is written to it."""
    lines = config.read_text().splitlines() if config.exists() else []
    lines = [ln for ln in lines if ln.split("=", 1)[0].strip() not in values]
    lines += [f"{k}={v}" for k, v in values.items()]
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _headless_auth(exe: str, client_id: str, label: str, label_dir: Path, timeout: float) -> None:
    """``-headless -id``: the secret goes to the 0600 config file, the code to stdin; never argv."""
    secret = os.environ.get("COLABKIT_OCAMLFUSE_CLIENT_SECRET") or getpass.getpass(
        "OAuth client secret for your client id (input hidden): "
    )
    _write_config(label_dir / "config", {"client_id": client_id, "client_secret": secret})
    env = {k: v for k, v in os.environ.items() if k != "COLABKIT_OCAMLFUSE_CLIENT_SECRET"}
    proc = subprocess.Popen(
        [exe, "-headless", "-id", client_id, "-label", label],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    code = ""
    try:
        seen = b""
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while b"verification code" not in seen.lower():
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                raise MountError(
                    f"google-drive-ocamlfuse did not ask for the verification code within {timeout:g} s",
                    "Run it in a terminal to see why: google-drive-ocamlfuse -headless -id CLIENT_ID -label "
                    f"{label}",
                    method="ocamlfuse",
                    reason="auth",
                )
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
        text = _scrub(seen.decode(errors="replace"), [secret])
        url = re.search(r"https://\S+", text)
        if url is None or b"verification code" not in seen.lower():
            proc.wait(timeout=timeout)
            raise MountError(
                f"google-drive-ocamlfuse -headless failed (exit {proc.returncode}): {text.strip()[-400:]}",
                "Check the client id and secret of your OAuth client (type Desktop app) in the Google Cloud "
                "console, then call colabkit.mount('ocamlfuse', client_id=...) again.",
                method="ocamlfuse",
                reason="auth",
            )
        print(
            "Open this URL, sign in, allow access, then copy the value after 'code=' from the address bar of "
            f"the page it sends you to (it may fail to load; that is fine):\n{url.group(0)}",
            flush=True,
        )
        code = getpass.getpass("Verification code (input hidden): ").strip()
        out, _ = proc.communicate((code + "\n").encode(), timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        tail = _scrub(out.decode(errors="replace"), [secret, code]).strip()[-400:]
        raise MountError(
            f"google-drive-ocamlfuse refused the verification code (exit {proc.returncode}): {tail}",
            "Codes work once and expire in minutes: sign in again and paste the new code.",
            method="ocamlfuse",
            reason="auth",
        )


def _mount_ocamlfuse(
    point: Path,
    *,
    readonly: bool,
    force: bool,
    timeout: float,
    service_account: str | os.PathLike[str] | None,
    state_dir: str | os.PathLike[str] | None,
    client_id: str | None,
    label: str,
) -> Mount:
    entry = _table_entry(point)
    if entry is not None and entry[0] == _OCAMLFUSE_FSTYPE:
        dead = _is_dead(point)
        if not dead and not force:
            return Mount("ocamlfuse", point, point, "ro" in entry[1])
        if dead:
            log.warning(
                "ocamlfuse mount at %s is dead (Transport endpoint is not connected): remounting", point
            )
        _unmount(point)
    elif entry is not None:
        raise MountError(
            f"{point} is already a mount point of another file system ({entry[0]})",
            f"Unmount it first (fusermount3 -u {point}) or pass another mountpoint.",
            mountpoint=point,
            method="ocamlfuse",
            reason="busy",
        )
    if point.is_dir() and any(point.iterdir()):
        raise _not_empty(point, "ocamlfuse")
    exe = _ensure_ocamlfuse()
    label_dir = Path.home() / ".gdfuse" / label
    args = [exe, "-label", label]
    if service_account is not None:
        key = Path(service_account).expanduser()
        if not key.is_file():
            raise MountError(
                f"the service account key {key} does not exist",
                "Create a key for the service account in the Google Cloud console (IAM → Service accounts → Keys "
                "→ Add key → JSON), upload it, and pass its path as service_account=...",
                method="ocamlfuse",
                reason="no_auth",
            )
        _private_dir(label_dir)
        args += ["-serviceaccountpath", str(key.absolute())]
    elif state_dir is not None:
        source = Path(state_dir).expanduser()
        if not (source / "state").is_file():
            raise MountError(
                f"{source} is not an authorized google-drive-ocamlfuse folder (it has no 'state' file)",
                "On a machine with a browser run google-drive-ocamlfuse -label NAME once, then copy the whole "
                "~/.gdfuse/NAME/ folder and pass it as state_dir=...",
                method="ocamlfuse",
                reason="no_auth",
            )
        _private_dir(label_dir)
        shutil.copytree(source, label_dir, dirs_exist_ok=True)  # copies the source's mode too: reset below
        label_dir.chmod(0o700)
        for path in label_dir.rglob("*"):
            path.chmod(0o700 if path.is_dir() else 0o600)
    elif client_id:
        _private_dir(label_dir)
        _headless_auth(exe, client_id, label, label_dir, timeout)
    elif not (label_dir / "state").is_file():
        raise MountError(
            f"google-drive-ocamlfuse has no credentials for label {label!r} (~/.gdfuse/{label}/ is empty)",
            _NO_AUTH_HINT,
            method="ocamlfuse",
            reason="no_auth",
        )
    if readonly:
        args += ["-o", "ro"]
    point.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        args + [str(point)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    entry = _table_entry(point)
    if proc.returncode != 0 or entry is None or entry[0] != _OCAMLFUSE_FSTYPE:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise MountError(
            f"google-drive-ocamlfuse could not mount {point} (exit {proc.returncode}): {tail}",
            f"Read ~/.gdfuse/{label}/gdfuse.log; if the credentials expired, authorize again (see docs/drive.md).",
            mountpoint=point,
            method="ocamlfuse",
            reason="failed",
        )
    return Mount("ocamlfuse", point, point, readonly)


# -- command line ----------------------------------------------------------------------------------


def _cli_configure_mount(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method", choices=METHODS, default="auto", help="default: drive on Colab, else local"
    )
    parser.add_argument("--mountpoint", help="where to mount (default depends on the method)")
    parser.add_argument("--readonly", action="store_true", help="mount read-only")
    parser.add_argument("--force", action="store_true", help="remount even if already mounted")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for Drive (default 120)")
    parser.add_argument("--service-account", help="ocamlfuse: service account key file")
    parser.add_argument("--state-dir", help="ocamlfuse: pre-authorized ~/.gdfuse/<label>/ folder to copy")
    parser.add_argument("--client-id", help="ocamlfuse: your own OAuth client id (-headless sign-in)")
    parser.add_argument("--label", help="ocamlfuse: account label (default 'default')")


def _cli_mount(args: argparse.Namespace) -> int:
    m = mount(
        args.method,
        args.mountpoint,
        readonly=args.readonly,
        force=args.force,
        timeout=args.timeout,
        service_account=args.service_account,
        state_dir=args.state_dir,
        client_id=args.client_id,
        label=args.label,
    )
    print(f"mounted: {m.describe()}")
    return 0
