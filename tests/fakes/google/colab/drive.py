"""Fake ``google.colab.drive``: what the real colabtools ``google/colab/drive.py`` does, step by step, with a
stand-in DriveFS (``tests/fakes/bin/drive``) that really mounts a folder with bindfs (``fuse.drive``).

As the real module, ``mount()``:

1. asks the frontend for consent (``_message.blocking_request``), then looks for ``<mountpoint>/My Drive``;
2. starts ``setsid bash --noediting -i``, which inherits the caller's working directory, and drives it like
   pexpect does (a prompt, one line at a time, a wait of ``timeout_ms/1000 + 30`` s per answer whose
   time-out raises ``pexpect``'s ``TIMEOUT`` with the spawn object's dump as its text);
3. runs ``umount -f MOUNTPOINT || umount MOUNTPOINT`` and kills every ``drive`` process (``pkill -9 -x
   drive``; here only those of this fake VM, found by ``FAKE_COLAB_VM`` in their environment);
4. checks the mountpoint (symlink, files, file, parent) only then;
5. starts the watcher loop ``( while sleep 0.5; do ... ls -A MOUNTPOINT ...; done ) &`` in that shell and
   DriveFS in a subshell of it; on "drive EXITED" or "problem and stopped" it kills the shell with SIGKILL
   (the watcher loop, a copy of the shell with the same working directory, stays behind) and raises
   ``mount failed``, with the time-out text when DriveFS's log says ``QueryManager timed out``;
6. on success disowns the background jobs and exits the shell.

Scripted through environment variables read at call time (``FAKE_DRIVEFS*`` reach DriveFS): ``FAKE_DRIVEFS``
``ok`` (default), ``fail`` (DriveFS stops with a problem) or ``stall`` (DriveFS never mounts nor exits);
``FAKE_DRIVEFS_ROOT_READ_MS`` (how long the first listing of the My Drive root takes; what a DriveFS that
timed out had listed is kept for the next one); ``FAKE_DRIVEFS_READONLY=ignore`` (DriveFS gets
``read_only_mode:true`` but mounts read-write anyway); ``FAKE_DRIVEFS_FLUSH=fail``; ``FAKE_DRIVEFS_BACKING``.
"""

import os
import re
import select
import subprocess
import time
import uuid
from pathlib import Path

from google.colab import _log, _message

__all__ = ["flush_and_unmount", "mount"]

_UNSET = object()
_PATH = "/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin:."
_PASSED = ("FAKE_DRIVEFS", "FAKE_DRIVEFS_ROOT_READ_MS", "FAKE_DRIVEFS_READONLY", "FAKE_DRIVEFS_BACKING")

try:  # the real drive.py waits through pexpect, whose exceptions these are
    from pexpect.exceptions import EOF, TIMEOUT
except ImportError:  # pragma: no cover - pexpect comes with IPython

    class TIMEOUT(Exception):  # noqa: N818 - pexpect's own name
        pass

    class EOF(Exception):  # noqa: N818
        pass

    TIMEOUT.__module__ = EOF.__module__ = "pexpect.exceptions"


class RequestWouldHangIndefinitelyError(RuntimeError):
    """Raised when code mounts without an explicit timeout: a real frontend could wait for minutes."""


class _Shell:
    """``setsid bash --noediting -i`` spoken to as pexpect's ``PopenSpawn`` does: send a line, wait for a pattern."""

    def __init__(self, timeout, env):
        self.timeout = timeout
        self.buffer = ""
        self.proc = subprocess.Popen(  # cwd: the caller's, as in the real module
            ["/usr/bin/setsid", "/bin/bash", "--noediting", "-i"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def sendline(self, line):
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def expect(self, patterns):
        patterns = patterns if isinstance(patterns, list) else [patterns]
        compiled = [re.compile(p) for p in patterns]
        deadline = time.monotonic() + self.timeout
        fd = self.proc.stdout.fileno()
        while True:
            found = [(m.start(), i, m) for i, c in enumerate(compiled) if (m := c.search(self.buffer))]
            if found:
                _, index, match = min(found, key=lambda f: (f[0], f[1]))
                self.buffer = self.buffer[match.end() :]
                return index
            left = deadline - time.monotonic()
            if left <= 0:
                raise TIMEOUT(self._dump("Timeout exceeded.", compiled))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    raise EOF(self._dump("End Of File (EOF).", compiled))
                self.buffer += data.decode(errors="replace")

    def _dump(self, head, compiled):
        me = f"<pexpect.popen_spawn.PopenSpawn object at {hex(id(self))}>"
        searcher = "".join(f"    {i}: re.compile({c.pattern!r})\n" for i, c in enumerate(compiled))
        return (
            f"{head}\n{me}\nsearcher: searcher_re:\n{searcher}{me}\nbuffer (last 100 chars): "
            f"{self.buffer[-100:]!r}\nbefore (last 100 chars): {self.buffer[-100:]!r}\nafter: <class "
            f"'pexpect.exceptions.TIMEOUT'>\nmatch: None\nmatch_index: None\nexitstatus: None\nflag_eof: False\n"
            f"pid: {self.proc.pid}\nchild_fd: {self.proc.stdout.fileno()}\nclosed: False\ntimeout: {self.timeout}"
        )

    def kill(self):
        self.proc.kill()
        self.close()

    def close(self):
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


def _backing():
    return Path(os.environ.get("FAKE_DRIVEFS_BACKING") or _log.sysroot() / "drivefs-backing")


def _state():
    return _log.sysroot() / "var/colab/fake-drivefs-mountpoint"


def _unescape(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _fuse_drive_at(mountpoint):
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and _unescape(fields[1]) == mountpoint and fields[2] == "fuse.drive":
                return True
    return False


def _logs_dir(home):
    return os.path.join(home, ".config", "Google", "DriveFS", "Logs")


def _pkill_drive():
    """``pkill -9 -x drive``, limited to this fake VM's processes."""
    marker = f"FAKE_COLAB_VM={_log.sysroot()}"
    return (
        'for p in $(pgrep -x drive); do grep -qzxF "' + marker + '" /proc/$p/environ 2>/dev/null && kill -9 $p; '
        "done"
    )


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
    metadata_server = os.environ["TBE_EPHEM_CREDS_ADDR"]
    _log.record(f"drive.mount {mountpoint} force_remount={force_remount} timeout_ms={timeout_ms}")
    consent = _message.blocking_request(
        "request_auth", request={"authType": "dfs_ephemeral"}, timeout_sec=int(timeout_ms / 1000)
    )
    mountpoint = os.path.expanduser(mountpoint)
    already_mounted = os.path.isdir(os.path.join(mountpoint, "My Drive"))
    if not force_remount and already_mounted:
        print(
            f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
            f'drive.mount("{mountpoint}", force_remount=True).'
        )
        return
    home = os.environ["HOME"]
    os.makedirs(os.path.join(home, ".config", "Google"), exist_ok=True)
    env = {"HOME": home, "FUSE_DEV_NAME": "/dev/fuse", "PATH": _PATH, "FAKE_COLAB_VM": str(_log.sysroot())}
    env.update({k: os.environ[k] for k in _PASSED if k in os.environ})
    env["FAKE_DRIVEFS_BACKING"] = str(_backing())
    if consent is None:  # the frontend never answered: the metadata server has no token for DriveFS
        env["FAKE_DRIVEFS_NO_CREDENTIALS"] = "1"
    d = _Shell(timeout=int(timeout_ms / 1000 + 30), env=env)
    try:
        _run_shell(d, mountpoint, timeout_ms, readonly, home, metadata_server)
    except BaseException:
        if d.proc.poll() is None:
            _LEFT_RUNNING.append(d)  # as the real PopenSpawn object: the shell goes on after the raise
        else:
            d.close()
        raise
    _state().write_text(mountpoint)
    print(f"Mounted at {mountpoint}")


_LEFT_RUNNING = []


def _run_shell(d, mountpoint, timeout_ms, readonly, home, metadata_server):
    prompt = f"root@{os.uname().nodename}-{uuid.uuid4().hex}: "
    d.sendline(f'unset HISTFILE; export PS1="{prompt}"')
    d.expect(prompt)
    drive_dir = _log.sysroot() / "opt/google/drive"
    d.sendline(f"umount -f {mountpoint} || umount {mountpoint}; {_pkill_drive()}")
    d.expect(prompt)
    try:
        if os.path.islink(mountpoint):
            raise ValueError("Mountpoint must not be a symlink")
        if os.path.isdir(mountpoint) and os.listdir(mountpoint):
            raise ValueError("Mountpoint must not already contain files")
        if not os.path.isdir(mountpoint) and os.path.exists(mountpoint):
            raise ValueError("Mountpoint must either be a directory or not exist")
        normed = os.path.normpath(mountpoint)
        if "/" in normed and not os.path.exists(os.path.dirname(normed)):
            raise ValueError("Mountpoint must be in a directory that exists")
    except BaseException:
        d.kill()
        raise
    success = "google.colab.drive MOUNTED"
    d.sendline(
        f'( while `sleep 0.5`; do if [[ -d "{mountpoint}" && "$(ls -A {mountpoint})" != "" ]]; '
        f'then echo "{success}"; break; fi; done ) &'
    )
    d.expect(prompt)
    domain_disabled = "The domain policy has disabled Drive File Stream"
    problem_and_stopped = "Drive File Stream encountered a problem and has stopped"
    drive_exited = "drive EXITED"
    d.sendline(
        f"( {drive_dir}/drive --features=crash_throttle_percentage:100,fuse_max_background:1000,"
        f"opendir_timeout_ms:{timeout_ms},virtual_folders_omit_spaces:true,"
        f"read_only_mode:{str(readonly).lower()} --metadata_server_auth_uri={metadata_server}/computeMetadata/v1"
        f" --preferences=trusted_root_certs_file_path:{drive_dir}/roots.pem,mount_point_path:{mountpoint}"
        f' 2>&1 | grep --line-buffered -E "{problem_and_stopped}|{domain_disabled}"; echo "{drive_exited}"; ) &'
    )
    d.expect(prompt)
    dfs_log = os.path.join(_logs_dir(home), "drive_fs.txt")
    while True:
        case = d.expect([success, prompt, problem_and_stopped, drive_exited, domain_disabled])
        if case == 0:
            break
        if case in (1, 2, 3):
            d.kill()
            extra = ""
            if subprocess.call(["grep", "-q", "QueryManager timed out", dfs_log], stderr=subprocess.DEVNULL) == 0:
                extra = (
                    ": timeout during initial read of root folder; for more info: "
                    "https://research.google.com/colaboratory/faq.html#drive-timeout"
                )
            raise ValueError("mount failed" + extra)
        d.kill()
        raise ValueError(f"{domain_disabled}: https://support.google.com/a/answer/7496409")
    d.sendline("disown -a")
    d.expect(prompt)
    d.sendline("exit")
    d.close()


def flush_and_unmount(timeout_ms=_UNSET):
    if timeout_ms is _UNSET:
        raise RequestWouldHangIndefinitelyError("drive.flush_and_unmount() called without timeout_ms")
    if (_log.sysroot() / "var/colab/mp").exists():
        raise NotImplementedError(__name__ + " is unsupported in this environment.")
    _log.record(f"drive.flush_and_unmount timeout_ms={timeout_ms}")
    state = _state()
    mountpoint = state.read_text() if state.exists() else ""
    if not mountpoint or not _fuse_drive_at(mountpoint):
        print("Drive not mounted, so nothing to flush and unmount.")
        return
    if os.environ.get("FAKE_DRIVEFS_FLUSH") == "fail":
        raise ValueError("flush_and_unmount failed")
    # drive --push_changes_and_quit: the writes reach the backing folder, DriveFS unmounts and exits
    os.sync()
    if subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True).returncode != 0:
        raise ValueError("flush_and_unmount failed")
    state.unlink()
