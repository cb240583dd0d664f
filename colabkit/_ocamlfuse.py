"""The ``ocamlfuse`` backend of ``colabkit.mount()``: google-drive-ocamlfuse, installed from its PPA when
missing, signed in with a service account key, a pre-authorized state folder or a ``-headless`` OAuth code.

For a second Google account, Shared Drives, Kaggle or any Linux box; ``colabkit.mount()`` (``_drive``) calls
:func:`mount` here and keeps ``find_mount()`` and ``flush()``.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

from . import _display, _mounts, _runtime
from ._mounts import OCAMLFUSE_FSTYPE, Mount
from .errors import MountError

__all__ = ["mount"]

log = logging.getLogger(__name__)

_PPA = "ppa:alessandro-strada/ppa"
_SECRET_VAR = "COLABKIT_OCAMLFUSE_CLIENT_SECRET"
INSTALL_TIMEOUT_S = 600.0  # one apt-get step
_NO_AUTH_HINT = (
    "Pass one of: service_account='key.json' (a service account key; share the Drive folders with its e-mail), "
    "state_dir='gdfuse-state/' (a ~/.gdfuse/<label>/ folder authorized once on a machine with a browser), or "
    "client_id='....apps.googleusercontent.com' (your own OAuth client; you paste a code). In a terminal: "
    "`colabkit mount --method ocamlfuse` with --service-account, --state-dir or --client-id."
)


def _tool_env(**extra: str) -> dict[str, str]:
    """The environment for the tool and its long-running FUSE daemon: never the client secret."""
    env = {k: v for k, v in os.environ.items() if k != _SECRET_VAR}
    env.update(extra)
    return env


def _os_ids() -> set[str]:
    ids: set[str] = set()
    try:
        text = (_runtime.sysroot() / "etc/os-release").read_text()
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
    ubuntu = "ubuntu" in _os_ids() or _runtime.detect_runtime().is_colab
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
    env = _tool_env(DEBIAN_FRONTEND="noninteractive")
    for step in steps:
        log.info("installing google-drive-ocamlfuse: %s", " ".join(step))
        try:
            proc = subprocess.run(step, capture_output=True, text=True, env=env, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise MountError(
                f"installing google-drive-ocamlfuse hung at {' '.join(step)!r} for {INSTALL_TIMEOUT_S:g} s",
                f"Check the network (apt mirrors, the PPA), then run it yourself in a terminal: {command}",
                method="ocamlfuse",
                reason="missing_tool",
            ) from None
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
    # taken out of the environment once read: the FUSE daemon and every training child inherit os.environ
    secret = os.environ.pop(_SECRET_VAR, None) or getpass.getpass(
        "OAuth client secret for your client id (input hidden): "
    )
    _write_config(label_dir / "config", {"client_id": client_id, "client_secret": secret})
    env = _tool_env()
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
        _display.note(
            "Open this URL, sign in, allow access, then copy the value after 'code=' from the address bar of "
            f"the page it sends you to (it may fail to load; that is fine):\n{url.group(0)}"
        )
        code = getpass.getpass("Verification code (input hidden): ").strip()
        try:
            out, _ = proc.communicate((code + "\n").encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MountError(
                f"google-drive-ocamlfuse did not finish signing in within {timeout:g} s after the code",
                "Check the network, then call colabkit.mount('ocamlfuse', client_id=..., timeout=300) and paste a "
                "new code.",
                method="ocamlfuse",
                reason="auth",
            ) from None
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


def _copy_state(source: Path, label_dir: Path, label: str) -> None:
    """Copy a pre-authorized state folder to ``~/.gdfuse/<label>/``, private to this user."""
    try:
        _private_dir(label_dir)
        # state_dir may be ~/.gdfuse/<label> itself; copytree copies the source's modes too: reset below
        if not os.path.samefile(source, label_dir):
            shutil.copytree(source, label_dir, dirs_exist_ok=True)
        label_dir.chmod(0o700)
        for path in label_dir.rglob("*"):
            path.chmod(0o700 if path.is_dir() else 0o600)
    except (OSError, shutil.Error) as exc:
        raise MountError(
            f"could not copy the google-drive-ocamlfuse state folder {source} to {label_dir}: {exc}",
            f"Check that you can read {source} and write ~/.gdfuse/ (or pass label=... for another folder), "
            "then call colabkit.mount('ocamlfuse', state_dir=...) again.",
            method="ocamlfuse",
            reason="no_auth",
        ) from exc


def mount(
    point: Path,
    *,
    readonly: bool,
    force: bool,
    timeout: float,
    service_account: str | os.PathLike[str] | None,
    state_dir: str | os.PathLike[str] | None,
    client_id: str | None,
    label: str | None,
) -> Mount:
    """Mount My Drive at ``point`` with google-drive-ocamlfuse; a live mount there is returned as it is.

    A dead mount is remounted in the same call and a hung one reported (restarted with ``force=True``); the
    working directory steps out of the mount and back into the same folder, as for ``drive``.

    Called by ``colabkit.mount("ocamlfuse", ...)``, which holds the defaults; the sign-in arguments
    passed as None are read from ``$COLABKIT_OCAMLFUSE_SERVICE_ACCOUNT``, ``$COLABKIT_OCAMLFUSE_STATE_DIR``,
    ``$COLABKIT_OCAMLFUSE_CLIENT_ID`` and ``$COLABKIT_OCAMLFUSE_LABEL`` (default ``default``).

    Args:
        point: The absolute mountpoint; it must be empty.
        readonly: Mount read-only (``-o ro``).
        force: Unmount and mount again even if a live mount is there.
        timeout: Seconds for the whole call: the sign-in prompt and the mount.
        service_account: A service account key file (JSON).
        state_dir: A ``~/.gdfuse/<label>/`` folder authorized once on a machine with a browser; it is
            copied to ``~/.gdfuse/<label>/`` here, private to you.
        client_id: Your own OAuth client id: ``-headless`` sign-in; the secret
            (``$COLABKIT_OCAMLFUSE_CLIENT_SECRET``) and the code are asked with getpass.
        label: The account label (``-label``): one ``~/.gdfuse/<label>/`` folder per account.

    Returns:
        The Mount, with ``root == mountpoint``.

    Raises:
        MountError: ``reason`` names the case: ``missing_tool`` (cannot install google-drive-ocamlfuse
            here), ``no_auth`` (no credentials, or a key/state folder that is not there or cannot be
            copied), ``auth`` (sign-in refused), ``not_empty``, ``busy`` (another file system there),
            ``readonly`` (a live mount is read-write and read-only was asked, or the reverse), ``timeout``
            (the tool hung), ``hung`` (a mount that does not answer; pass force=True), ``failed``.

    Examples:
        >>> colabkit.mount("ocamlfuse", service_account="key.json")  # calls this
        Mount(method='ocamlfuse', mountpoint='/content/gdrive', root='/content/gdrive')
    """
    from . import _remount

    deadline = time.monotonic() + timeout
    entry = _mounts.entry(point)
    if entry is not None and entry.fstype != OCAMLFUSE_FSTYPE:
        raise MountError(
            f"{point} is already a mount point of another file system ({entry.fstype})",
            f"Unmount it first (fusermount3 -u {point}) or pass another mountpoint.",
            mountpoint=point,
            method="ocamlfuse",
            reason="busy",
        )
    args = (point, readonly, timeout, deadline, service_account, state_dir, client_id, label)
    if entry is None:
        return _mount_fresh(*args)
    state = _mounts.health(point).state
    current = Mount("ocamlfuse", point, point, entry.readonly)
    if state == "live" and not force:
        _mounts.check_readonly(point, "ocamlfuse", entry.readonly, readonly)
        return current
    if state == "hung" and not force:
        raise _remount.hung_error(current, "colabkit cannot use it")
    if state != "live":
        log.warning("ocamlfuse mount at %s is %s: remounting", point, state)
    with _remount.stepped_out(point) as back:
        remounted = False
        try:
            if state == "live":
                others = _remount.others_holding(point)
                if others:
                    raise _remount.busy_error(point, "ocamlfuse", others)
                _mounts.unmount(point)
            else:
                _remount.clear(point, state, "ocamlfuse")
            result = _mount_fresh(*args)
            remounted = True
        finally:
            back(quiet=not remounted)
    _remount.restore_imports(point)
    return result


def _mount_fresh(
    point: Path,
    readonly: bool,
    timeout: float,
    deadline: float,
    service_account: str | os.PathLike[str] | None,
    state_dir: str | os.PathLike[str] | None,
    client_id: str | None,
    label: str | None,
) -> Mount:
    """Sign in and mount at ``point``, where nothing is mounted, within ``timeout`` s in all (by ``deadline``)."""
    service_account = service_account or os.environ.get("COLABKIT_OCAMLFUSE_SERVICE_ACCOUNT")
    state_dir = state_dir or os.environ.get("COLABKIT_OCAMLFUSE_STATE_DIR")
    client_id = client_id or os.environ.get("COLABKIT_OCAMLFUSE_CLIENT_ID")
    label = label or os.environ.get("COLABKIT_OCAMLFUSE_LABEL") or "default"
    if point.is_dir() and any(point.iterdir()):
        raise _mounts.not_empty(point, "ocamlfuse")
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
        _copy_state(source, label_dir, label)
    elif client_id:
        _private_dir(label_dir)
        _headless_auth(exe, client_id, label, label_dir, max(1.0, deadline - time.monotonic()))
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
    try:
        proc = subprocess.run(
            args + [str(point)],
            capture_output=True,
            text=True,
            timeout=max(0.1, deadline - time.monotonic()),
            stdin=subprocess.DEVNULL,
            env=_tool_env(),
        )
    except subprocess.TimeoutExpired:
        half = _mounts.entry(point)
        if half is not None and half.fstype == OCAMLFUSE_FSTYPE:
            _mounts.unmount(point)  # the mount came up but the tool never said so: do not keep a half-made mount
        raise MountError(
            f"google-drive-ocamlfuse did not finish mounting {point} within {timeout:g} s",
            f"Drive may be slow to answer: call colabkit.mount('ocamlfuse', timeout=300); if it hangs again, "
            f"read ~/.gdfuse/{label}/gdfuse.log.",
            mountpoint=point,
            method="ocamlfuse",
            reason="timeout",
        ) from None
    entry = _mounts.entry(point)
    if proc.returncode != 0 or entry is None or entry.fstype != OCAMLFUSE_FSTYPE:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise MountError(
            f"google-drive-ocamlfuse could not mount {point} (exit {proc.returncode}): {tail}",
            f"Read ~/.gdfuse/{label}/gdfuse.log; if the credentials expired, authorize again: mount with "
            "client_id=... (you paste a new code) or a freshly authorized state_dir=...",
            mountpoint=point,
            method="ocamlfuse",
            reason="failed",
        )
    return Mount("ocamlfuse", point, point, readonly)
