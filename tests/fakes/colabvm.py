"""A fake Colab VM for tests: a sysroot with /var/colab/hostname, the fake ``google.colab`` importable,
and DriveFS (``tests/fakes/bin/drive``, installed at ``<sysroot>/opt/google/drive/drive``) serving a local
folder through bindfs. Everything lives under the test's tmp_path; every process the fake starts carries
``FAKE_COLAB_VM=<sysroot>`` in its environment, so a test can find (and its teardown end) what is left."""

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
    drive_dir = sysroot / "opt/google/drive"
    (drive_dir / "fuse").mkdir(parents=True)
    (drive_dir / "drive").symlink_to(BIN / "drive")
    bindfs_exe = shutil.which("bindfs")
    if bindfs_exe:  # exec'ed through a link named "drive": the FUSE daemon's process name is "drive"
        (drive_dir / "fuse/drive").symlink_to(bindfs_exe)
    backing = tmp_path / "drive-backing"
    (backing / "MyDrive").mkdir(parents=True)
    monkeypatch.setenv("COLABKIT_SYSROOT", str(sysroot))
    monkeypatch.setenv("FAKE_DRIVEFS_BACKING", str(backing))
    monkeypatch.setenv("TBE_RUNTIME_ADDR", "172.28.0.1:8011")
    monkeypatch.setenv("TBE_EPHEM_CREDS_ADDR", "172.28.0.1:8009")
    # Colab in a browser: a test process has no notebook kernel, which colabkit would take for a shell on
    # the VM (no front end); a test of another front end sets or removes this
    monkeypatch.setenv("COLABKIT_FRONTEND", "browser")
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
        if argv and os.path.basename(argv[0]) in (b"bindfs", b"drive") and str(mountpoint).encode() in argv:
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


def vm_processes(sysroot: Path) -> dict[int, list[str]]:
    """pid -> command line of every live process the fake google.colab started for this VM."""
    marker = f"FAKE_COLAB_VM={sysroot}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found[int(entry.name)] = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except (OSError, IndexError):
            continue
    return found


def holding(sysroot: Path, folder: Path) -> dict[int, list[str]]:
    """This VM's fake processes whose working directory is ``folder`` or below it."""
    out = {}
    for pid, argv in vm_processes(sysroot).items():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}/"):
            out[pid] = argv
    return out


def end_vm_processes(sysroot: Path) -> None:
    """SIGKILL what the fake started for this VM (watcher loops, DriveFS, stopped ones too); wait until gone."""
    for _ in range(50):
        pids = vm_processes(sysroot)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        select.select([], [], [], 0.05)
    raise TimeoutError(f"fake VM processes did not end: {vm_processes(sysroot)}")


@contextlib.contextmanager
def hung_fuse(mountpoint: Path) -> Iterator[int]:
    """Stop (SIGSTOP) the FUSE process under a mount, as a hung DriveFS; SIGCONT it on the way out."""
    pid = fuse_pid(mountpoint)
    fd = os.pidfd_open(pid)  # signals go to this process even if its pid is reused meanwhile
    try:
        signal.pidfd_send_signal(fd, signal.SIGSTOP)
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGCONT)
        os.close(fd)
