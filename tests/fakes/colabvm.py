"""A fake Colab VM for tests: a sysroot with /var/colab/hostname, the fake ``google.colab`` importable,
and DriveFS serving a local folder through bindfs. Everything lives under the test's tmp_path."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FAKES = Path(__file__).resolve().parent
BIN = FAKES / "bin"


@dataclass
class FakeVM:
    sysroot: Path
    backing: Path  # the "remote" Drive DriveFS serves; My Drive files are in backing/MyDrive

    @property
    def mountpoint(self) -> Path:
        return self.sysroot / "content/drive"

    @property
    def mydrive(self) -> Path:
        return self.backing / "MyDrive"

    def calls(self) -> list[str]:
        log = self.sysroot / "var/colab/fake-calls.log"
        return log.read_text().splitlines() if log.exists() else []

    @property
    def unassigned(self) -> bool:
        return (self.sysroot / "var/colab/unassigned").exists()


def use_fake_colab(monkeypatch) -> None:
    """Make ``import google.colab`` find the fake (undone with monkeypatch; call forget_fake_colab after)."""
    monkeypatch.syspath_prepend(str(FAKES))
    forget_fake_colab()


def forget_fake_colab() -> None:
    for name in [m for m in sys.modules if m == "google" or m.startswith("google.")]:
        del sys.modules[name]


def make_vm(tmp_path: Path, monkeypatch) -> FakeVM:
    sysroot = tmp_path / "vm"
    (sysroot / "var/colab").mkdir(parents=True)
    (sysroot / "var/colab/hostname").write_text("colab-test-vm\n")
    (sysroot / "content").mkdir()
    backing = tmp_path / "drive-backing"
    (backing / "MyDrive").mkdir(parents=True)
    monkeypatch.setenv("COLABKIT_SYSROOT", str(sysroot))
    monkeypatch.setenv("FAKE_DRIVEFS_BACKING", str(backing))
    monkeypatch.setenv("TBE_RUNTIME_ADDR", "172.28.0.1:8011")
    use_fake_colab(monkeypatch)
    return FakeVM(sysroot, backing)


def mount_table() -> dict[str, str]:
    """mountpoint -> fstype, from the real /proc/mounts (octal escapes decoded)."""
    out = {}
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        fields = line.split()
        point = fields[1]
        for code in ("\\040", "\\011", "\\012", "\\134"):
            point = point.replace(code, chr(int(code[1:], 8)))
        out[point] = fields[2]
    return out


def unmount(point: Path | str) -> bool:
    """Unmount one mount: ``fusermount3 -u``, else ``fusermount -u``, else ``umount -l``; True when one worked."""
    for cmd in (["fusermount3", "-u", str(point)], ["fusermount", "-u", str(point)], ["umount", "-l", str(point)]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
            return True
    return False


def mounts_under(folder: Path) -> list[str]:
    """Mountpoints strictly below ``folder``, deepest first."""
    prefix = str(folder) + "/"
    return sorted((p for p in mount_table() if p.startswith(prefix)), key=len, reverse=True)


def unmount_under(folder: Path) -> None:
    """Unmount every mount below ``folder``, deepest first."""
    for point in mounts_under(folder):
        unmount(point)


@contextlib.contextmanager
def bindfs(backing: Path, point: Path, *options: str) -> Iterator[Path]:
    """Serve ``backing`` at ``point`` through a real FUSE mount that shows as ``fuse.drive``; unmount after."""
    point.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["bindfs", "-o", "fsname=drive,subtype=drive", *options, str(backing), str(point)],
        check=True, capture_output=True, timeout=30,
    )
    try:
        yield point
    finally:
        unmount(point)


def fuse_pid(mountpoint: Path) -> int:
    """PID of the bindfs process serving ``mountpoint``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"bindfs" and str(mountpoint).encode() in argv:
            return int(entry.name)
    raise LookupError(f"no bindfs process serves {mountpoint}")


def kill_fuse(mountpoint: Path) -> None:
    """Kill the FUSE process under a mount, as when DriveFS dies hours into a run; wait until it is gone."""
    pid = fuse_pid(mountpoint)
    fd = os.pidfd_open(pid)  # readable once the process has exited, child or not
    try:
        os.kill(pid, signal.SIGKILL)
        if not select.select([fd], [], [], 10)[0]:
            raise TimeoutError(f"bindfs {pid} did not exit")
    finally:
        os.close(fd)
