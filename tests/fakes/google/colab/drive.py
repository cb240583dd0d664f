"""Fake ``google.colab.drive``: same checks, order and messages as the real one; its DriveFS stand-in
really mounts ``$FAKE_DRIVEFS_BACKING`` with bindfs, so the mount table shows ``fuse.drive``."""

import os
import subprocess
import sys
from pathlib import Path

from google.colab import _log, _message

__all__ = ["flush_and_unmount", "mount"]

_UNSET = object()
_DRIVEFS = Path(__file__).resolve().parents[2] / "bin" / "drivefs"


class RequestWouldHangIndefinitelyError(RuntimeError):
    """Raised when code mounts without an explicit timeout: a real frontend could wait for minutes."""


def _backing():
    return Path(os.environ.get("FAKE_DRIVEFS_BACKING") or _log.sysroot() / "drivefs-backing")


def _state():
    return _log.sysroot() / "var/colab/fake-drivefs-mountpoint"


def _unescape(field):
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _fuse_drive_at(mountpoint):
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and _unescape(fields[1]) == mountpoint and fields[2] == "fuse.drive":
                return True
    return False


def _unmount(mountpoint):
    for cmd in (["fusermount3", "-u", mountpoint], ["umount", "-l", mountpoint]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return True
    return False


def mount(mountpoint, force_remount=False, timeout_ms=_UNSET, readonly=False):
    if timeout_ms is _UNSET:
        raise RequestWouldHangIndefinitelyError("drive.mount() called without timeout_ms")
    if not (_log.sysroot() / "var/colab/hostname").exists():
        raise NotImplementedError(
            "Mounting drive is unsupported in this environment. Use PyDrive2 instead. See examples at "
            "https://colab.research.google.com/notebooks/io.ipynb#scrollTo=7taylj9wpsA2."
        )
    if " " in mountpoint:
        raise ValueError("Mountpoint must not contain a space.")
    if os.environ.get("VERTEX_PRODUCT") == "COLAB_ENTERPRISE":
        raise NotImplementedError("google.colab.drive.mount is not supported in Colab Enterprise.")
    _log.record(f"drive.mount {mountpoint} force_remount={force_remount} timeout_ms={timeout_ms}")
    consent = _message.blocking_request(
        "request_auth", {"authType": "dfs_ephemeral"}, timeout_sec=timeout_ms / 1000
    )
    mountpoint = os.path.expanduser(mountpoint)
    if not force_remount and os.path.isdir(os.path.join(mountpoint, "My Drive")):
        print(
            f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
            f'drive.mount("{mountpoint}", force_remount=True).'
        )
        return
    if _fuse_drive_at(mountpoint):
        _unmount(mountpoint)
    if os.path.islink(mountpoint):
        raise ValueError("Mountpoint must not be a symlink")
    if os.path.isdir(mountpoint) and os.listdir(mountpoint):
        raise ValueError("Mountpoint must not already contain files")
    if not os.path.isdir(mountpoint) and os.path.exists(mountpoint):
        raise ValueError("Mountpoint must either be a directory or not exist")
    normed = os.path.normpath(mountpoint)
    if "/" in normed and not os.path.exists(os.path.dirname(normed)):
        raise ValueError("Mountpoint must be in a directory that exists")
    if consent is None or os.environ.get("FAKE_DRIVEFS") == "fail":
        raise ValueError("mount failed")
    if int(os.environ.get("FAKE_DRIVEFS_ROOT_READ_MS") or 0) > timeout_ms:
        raise ValueError(
            "mount failed: timeout during initial read of root folder; for more info: "
            "https://research.google.com/colaboratory/faq.html#drive-timeout"
        )
    os.makedirs(mountpoint, exist_ok=True)
    cmd = [sys.executable, str(_DRIVEFS), "--backing", str(_backing()), "--mountpoint", mountpoint]
    if readonly:
        cmd.append("--readonly")
    if subprocess.run(cmd).returncode != 0:
        raise ValueError("mount failed")
    _state().write_text(mountpoint)
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms=_UNSET):
    if timeout_ms is _UNSET:
        raise RequestWouldHangIndefinitelyError("drive.flush_and_unmount() called without timeout_ms")
    _log.record(f"drive.flush_and_unmount timeout_ms={timeout_ms}")
    state = _state()
    mountpoint = state.read_text() if state.exists() else ""
    if not mountpoint or not _fuse_drive_at(mountpoint):
        print("Drive not mounted, so nothing to flush and unmount.")
        return
    if os.environ.get("FAKE_DRIVEFS_FLUSH") == "fail":
        raise ValueError("flush_and_unmount failed")
    os.sync()
    if not _unmount(mountpoint):
        raise ValueError("flush_and_unmount failed")
    state.unlink()
