"""Benchmark: colabkit.stage() against ``cp -r`` for 5,000 files of 4 KiB, read through FUSE.

Two sources, each measured in one run of this script:

* ``bindfs``: a plain FUSE passthrough (``bindfs`` must be installed);
* ``delayed``: a tiny passthrough FUSE file system (below, on ``fusepy``: ``pip install fusepy``)
  that sleeps ``--delay-ms`` (default 5 ms) in every file open, as Drive does for each file it fetches.

For each: ``cp -r`` of the folder, the first stage() (packs the archive beside the folder and
extracts it), stage() again into an empty destination once the archive exists, and a repeat call
(a no-op). Needs root or FUSE permissions. Prints seconds and the ratio cp -r / stage().

    python3 bench/stage.py [--files 5000] [--size 4096] [--delay-ms 5]
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def serve_delayed(backing: str, mountpoint: str, delay_s: float) -> None:
    """Run the delaying passthrough in the foreground until unmounted."""
    from fuse import FUSE, FuseOSError, Operations

    class Delayed(Operations):
        def __init__(self) -> None:
            self.root = backing

        def _p(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def __call__(self, op, path, *args):
            try:
                return super().__call__(op, path, *args)
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from None

        def access(self, path, mode):
            if not os.access(self._p(path), mode):
                raise FuseOSError(errno.EACCES)

        def getattr(self, path, fh=None):
            st = os.lstat(self._p(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")
            out = {k: getattr(st, k) for k in keys}
            out.update(st_atime=st.st_atime_ns / 1e9, st_mtime=st.st_mtime_ns / 1e9, st_ctime=st.st_ctime_ns / 1e9)
            return out

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(self._p(path))]

        def statfs(self, path):
            st = os.statvfs(self._p(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                    "f_frsize", "f_namemax")
            return {k: getattr(st, k) for k in keys}

        def open(self, path, flags):
            time.sleep(delay_s)  # Drive fetching the file
            return os.open(self._p(path), flags)

        def create(self, path, mode, fi=None):
            time.sleep(delay_s)
            return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def write(self, path, data, offset, fh):
            return os.pwrite(fh, data, offset)

        def truncate(self, path, length, fh=None):
            os.truncate(self._p(path), length)

        def flush(self, path, fh):
            return 0

        def fsync(self, path, datasync, fh):
            os.fsync(fh)

        def release(self, path, fh):
            os.close(fh)

        def mkdir(self, path, mode):
            os.mkdir(self._p(path), mode)

        def rmdir(self, path):
            os.rmdir(self._p(path))

        def unlink(self, path):
            os.unlink(self._p(path))

        def rename(self, old, new):
            os.replace(self._p(old), self._p(new))

        def chmod(self, path, mode):
            os.chmod(self._p(path), mode)

        def utimens(self, path, times=None):
            os.utime(self._p(path), times)

    FUSE(Delayed(), mountpoint, foreground=True, nothreads=False, fsname="delayed", subtype="drive")


def _mounted(point: Path) -> bool:
    return any(line.split()[1] == str(point) for line in Path("/proc/mounts").read_text().splitlines())


def _unmount(point: Path) -> None:
    for cmd in (["fusermount3", "-u", str(point)], ["fusermount", "-u", str(point)], ["umount", "-l", str(point)]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
            return


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(label: str, mnt: Path, work: Path) -> None:
    from colabkit import _stage

    src = mnt / "ds"
    for leftover in (src.with_name("ds" + _stage.ARCHIVE_SUFFIX), src.with_name("ds" + _stage.INDEX_SUFFIX)):
        leftover.unlink(missing_ok=True)
    out = work / f"out-{label}"
    out.mkdir()
    t_cp = _timed(lambda: subprocess.run(["cp", "-r", str(src), str(out / "cp")], check=True))
    t_first = _timed(lambda: _stage.stage(src, out / "first", progress=False))
    t_stage = _timed(lambda: _stage.stage(src, out / "staged", progress=False))
    t_noop = _timed(lambda: _stage.stage(src, out / "staged", progress=False))
    n = sum(1 for _ in (out / "staged").rglob("*.bin"))
    print(f"{label:8s} cp -r {t_cp:7.2f} s | stage first (packs) {t_first:7.2f} s | "
          f"stage, archive exists {t_stage:6.2f} s | no-op {t_noop * 1000:6.1f} ms | "
          f"cp -r / stage = {t_cp / t_stage:5.1f}x  ({n} files)")
    shutil.rmtree(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="delay added to each open on the delayed mount")
    parser.add_argument("--serve-delayed", nargs=3, metavar=("BACKING", "MOUNTPOINT", "DELAY_S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_delayed:
        serve_delayed(args.serve_delayed[0], args.serve_delayed[1], float(args.serve_delayed[2]))
        return 0

    work = Path(tempfile.mkdtemp(prefix="colabkit-bench-"))
    backing = work / "backing"
    payload = os.urandom(args.size)
    for i in range(args.files):
        sub = backing / "ds" / f"d{i % 50:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(payload)
    print(f"{args.files} files of {args.size} B; {os.cpu_count()} CPUs")
    mounts: list[Path] = []
    server = None
    try:
        plain = work / "bindfs"
        plain.mkdir()
        subprocess.run(["bindfs", str(backing), str(plain)], check=True)
        mounts.append(plain)
        measure("bindfs", plain, work)

        try:
            import fuse  # noqa: F401
        except (ImportError, OSError) as exc:
            print(f"delayed: skipped, fusepy is not usable ({exc}); pip install fusepy")
            return 0
        slow = work / "delayed"
        slow.mkdir()
        server = subprocess.Popen([sys.executable, __file__, "--serve-delayed", str(backing), str(slow),
                                   str(args.delay_ms / 1000)])
        mounts.append(slow)
        deadline = time.monotonic() + 30
        while not _mounted(slow):
            if server.poll() is not None or time.monotonic() > deadline:
                print("delayed: the FUSE server did not start")
                return 1
            time.sleep(0.05)
        print(f"delayed mount: {args.delay_ms:g} ms per file open")
        measure("delayed", slow, work)
    finally:
        for point in reversed(mounts):
            _unmount(point)
        if server is not None:
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
