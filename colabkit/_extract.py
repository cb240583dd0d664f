"""Unpacking archives safely: each member checked against the destination on disk as extraction proceeds,
the disk's free space checked before each member is written, small files written in parallel.

Every member path, symlink target and hard-link source is resolved (``os.path.realpath``) against the folder
as it is on disk at that moment, so a chain of links that are each lexically inside (``x/l0 -> ..``,
``x/l1 -> l0/..``) but climb out together is refused, on every Python colabkit supports: the check is
colabkit's own. Where the Python has ``tarfile.data_filter`` (3.10.12+, 3.11.4+, 3.12+) it runs on every
member too, as a second line. Nothing is written through an existing symlink, hard links are made from the
resolved source, and once the archive is done every symlink made is resolved again (a later link can turn
an earlier one outward). Devices and FIFOs are refused. Names are taken as they are: a backslash or a colon
is a legal character of a Linux file name, not a separator or a drive.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ._format import format_bytes
from .errors import StageError

__all__ = ["PREFETCH_MAX", "WORKERS", "Progress", "Space", "extract_tar", "extract_zip", "unpacked_size"]

PREFETCH_MAX = 1 << 20  # files up to this size are handled whole, in parallel
WORKERS = 16  # Drive answers file opens slowly but in parallel; a VM disk creates files faster in parallel
_CHUNK = 1 << 20
_BLOCK = 4096  # what a file costs at least on disk, and the unit its size is rounded up to
_RECHECK_BYTES = 64 << 20  # the free space is asked again after this much was written
_DATA_FILTER = getattr(tarfile, "data_filter", None)  # the second line, where this Python has it


class Space:
    """The free space of the disk a staging writes to, checked before each member (``take``), so that the
    error comes before the first byte that does not fit, not as a raw ENOSPC mid-file.

    ``slack`` bytes stay free for the rest of the VM. The disk is asked again every :data:`_RECHECK_BYTES`
    and whenever what is taken would not fit what was free at the last look.
    """

    def __init__(self, folder: Path, source: Path, *, slack: int, drain: Any = None) -> None:
        self.folder = folder
        self.source = source
        self.slack = slack
        self.written = 0  # bytes taken so far (rounded up to blocks)
        self._drain = drain
        self._free = self._ask()
        self._since = 0

    def _ask(self) -> int:
        return shutil.disk_usage(self.folder).free

    def take(self, size: int, name: str) -> None:
        cost = max(_BLOCK, -(-size // _BLOCK) * _BLOCK)
        if self._since + cost + self.slack > self._free or self._since > _RECHECK_BYTES:
            if self._drain is not None:
                self._drain()  # the pending writes land first: what is free is then what it says
            self._free, self._since = self._ask(), 0
            if cost + self.slack > self._free:
                raise self.error(name, size)
        self._since += cost
        self.written += cost

    def error(self, name: str, size: int | None = None) -> StageError:
        free = self._ask()
        what = f"{name!r} ({format_bytes(size)})" if size is not None else repr(name)
        return StageError(
            f"Not enough local disk to stage {self.source}: {what} does not fit; {format_bytes(self.written)} "
            f"were written so far and {self.folder.parent} has {format_bytes(free)} free",
            f"Nothing was kept: free space on the VM (delete old copies under {self.folder.parent}), stage a "
            "smaller subset, or pass dest= on a disk with more room.",
            needed_bytes=self.written + (size or 0),
            free_bytes=free,
        )


class Progress:
    """A tqdm bar when someone is watching, else nothing; tqdm is imported only then."""

    def __init__(self, enabled: bool, total: int | None, desc: str, unit: str = "B") -> None:
        self._bar = None
        if not enabled:
            return
        from ._runtime import display_mode

        mode = display_mode()
        if mode == "plain":
            return
        kwargs = {"total": total, "desc": desc, "unit": unit, "leave": True}
        if unit == "B":
            kwargs.update(unit_scale=True, unit_divisor=1024)
        if mode == "notebook":
            import importlib.util

            if importlib.util.find_spec("ipywidgets") is not None:
                from tqdm.notebook import tqdm as bar_class
            else:  # without ipywidgets tqdm.notebook warns; the text bar works in Colab too
                from tqdm.std import tqdm as bar_class
        else:
            from tqdm.std import tqdm as bar_class
        self._bar = bar_class(file=sys.stdout, **kwargs)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CountingReader(io.RawIOBase):
    """Wraps a binary file and reports bytes read to a progress bar."""

    def __init__(self, raw: IO[bytes], progress: Progress) -> None:
        self._raw = raw
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._progress.update(n)
        return n or 0


def _safe_rel(name: str, archive: Path) -> PurePosixPath:
    """The member path inside the destination, or StageError when it names a place outside it."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise _escape_error(archive, name)
    return rel


def _escape_error(archive: Path, name: str) -> StageError:
    return StageError(
        f"Refusing to extract {archive}: member {name!r} would be written outside the destination",
        "Only stage archives you trust; re-create this one with relative paths inside a single folder.",
    )


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


class _Guard:
    """The destination as it is on disk: where a member would really land, and the links made so far."""

    def __init__(self, into: Path, archive: Path) -> None:
        self.into = into
        self.root = os.path.realpath(into)
        self.archive = archive
        self.links: list[tuple[Path, str]] = []  # (symlink made, member name)

    def target(self, rel: PurePosixPath, name: str) -> Path:
        """The resolved path ``rel`` lands on: its folder resolved on disk, never through a link at its end."""
        parent = os.path.realpath(self.into.joinpath(*rel.parts[:-1]))
        if not _inside(parent, self.root):
            raise _escape_error(self.archive, name)
        target = Path(parent) / rel.name if rel.parts else Path(parent)
        if os.path.islink(target):
            raise StageError(
                f"Refusing to extract {self.archive}: member {name!r} would be written through the link "
                f"{target.relative_to(self.root) if _inside(str(target), self.root) else target}",
                "Only stage archives you trust; re-create this one without members that replace a link.",
            )
        return target

    def symlink(self, member: tarfile.TarInfo, rel: PurePosixPath) -> Path:
        """Where the symlink goes, once its target is known to resolve inside the destination."""
        target = self.target(rel, member.name)
        link = member.linkname
        where = os.path.realpath(target.parent / link)
        if PurePosixPath(link).is_absolute() or not _inside(where, self.root) or target.is_dir():
            raise _escape_error(self.archive, f"{member.name} -> {link}")
        return target

    def hardlink(self, member: tarfile.TarInfo, rel: PurePosixPath) -> tuple[str, Path]:
        """The resolved source of a hard link (a file inside the destination) and where the link goes."""
        target = self.target(rel, member.name)
        source = os.path.realpath(self.into / _safe_rel(member.linkname, self.archive))
        if not _inside(source, self.root) or not os.path.isfile(source) or target.is_dir():
            raise _escape_error(self.archive, f"{member.name} => {member.linkname}")
        return source, target

    def make_link(self, member: tarfile.TarInfo, rel: PurePosixPath) -> None:
        if member.issym():
            target = self.symlink(member, rel)
            _second_line(member, self)
            os.symlink(member.linkname, target)
            self.links.append((target, member.name))
        else:
            source, target = self.hardlink(member, rel)
            _second_line(member, self)
            if os.path.lexists(target):
                os.unlink(target)
            os.link(source, target)

    def recheck(self) -> None:
        """A later link can turn an earlier one outward (``a -> b/../x``, then ``b -> .``): resolve them all again."""
        for link, name in self.links:
            if not _inside(os.path.realpath(link), self.root):
                raise _escape_error(self.archive, f"{name} -> {os.readlink(link)}")


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """colabkit's own first look at a member: its path, absolute link targets, devices and FIFOs."""
    rel = _safe_rel(member.name, archive)
    if member.issym() or member.islnk():
        if PurePosixPath(member.linkname).is_absolute():
            raise _escape_error(archive, f"{member.name} -> {member.linkname}")
    elif not (member.isfile() or member.isdir()):
        raise StageError(
            f"Refusing to extract {archive}: member {member.name!r} is a device or FIFO",
            "Stage archives of plain files and folders only.",
        )
    return rel


def _second_line(member: tarfile.TarInfo, guard: _Guard) -> None:
    """``tarfile.data_filter`` where this Python has it, after colabkit's own checks passed."""
    if _DATA_FILTER is None:
        return
    try:
        _DATA_FILTER(member, str(guard.into))
    except tarfile.FilterError as exc:
        link = f" -> {member.linkname}" if member.issym() or member.islnk() else ""
        raise _escape_error(guard.archive, member.name + link) from exc


def _write_file(path: Path, data: bytes, mode: int, mtime: float) -> None:
    with open(path, "xb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (mtime, mtime))


class _Writer:
    """Creates small files on a thread pool: on a VM disk each file creation costs most of the time."""

    def __init__(self, into: Path) -> None:
        self.into = into
        self._dirs: set[Path] = {into}
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="colabkit-stage")
        self._pending: deque[Future[None]] = deque()

    def parent(self, rel: PurePosixPath) -> Path:
        folder = self.into.joinpath(*rel.parts[:-1])
        if folder not in self._dirs:
            folder.mkdir(parents=True, exist_ok=True)
            self._dirs.add(folder)
        return folder

    def submit(self, rel: PurePosixPath, data: bytes, executable: bool, mtime: float, path: Path | None = None) -> None:
        """Write ``data`` as ``rel`` (at ``path``, its resolved place, when given) on the pool."""
        if path is None:
            path = self.parent(rel) / rel.name
        elif path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        self._pending.append(self._pool.submit(_write_file, path, data, 0o755 if executable else 0o644, mtime))
        while len(self._pending) > 8 * WORKERS:
            self._pending.popleft().result()

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.drain()
        finally:
            self.close()


def extract_tar(archive: Path, into: Path, progress: bool, space: Space | None = None) -> None:
    """Unpack a tar (any compression tarfile reads) into the empty folder ``into``, member by member."""
    guard = _Guard(into, archive)
    with (
        open(archive, "rb", buffering=0) as raw,
        Progress(progress, archive.stat().st_size, f"extract {archive.name}") as bar,
        _Writer(into) as writer,
    ):
        if space is not None:
            space._drain = writer.drain
        reader = io.BufferedReader(_CountingReader(raw, bar), buffer_size=_CHUNK)
        with tarfile.open(fileobj=reader, mode="r|*") as tar:
            for member in tar:
                rel = _check_tar_member(member, archive)
                if not rel.parts:
                    continue  # "." itself
                if member.isdir():
                    writer.drain()
                    target = guard.target(rel, member.name)
                    _second_line(member, guard)
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if space is not None:
                    space.take(member.size if member.isfile() else 0, member.name)
                if member.issym() or member.islnk():
                    writer.drain()  # links change where later paths lead: in order, after every write so far
                    guard.make_link(member, rel)
                    continue
                target = guard.target(rel, member.name)
                _second_line(member, guard)
                if member.size <= PREFETCH_MAX:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    writer.submit(rel, data, bool(member.mode & 0o100), member.mtime, target)
                    continue
                writer.drain()
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with open(target, "xb") as out:  # "x": never through a link made meanwhile
                    shutil.copyfileobj(source, out, _CHUNK)
                os.chmod(target, 0o755 if member.mode & 0o100 else 0o644)
                os.utime(target, (member.mtime, member.mtime))
        writer.drain()
    guard.recheck()


def extract_zip(archive: Path, into: Path, progress: bool, space: Space | None = None) -> None:
    """Unpack a zip into the empty folder ``into``; links in it are refused (zip has no safe form of them)."""
    guard = _Guard(into, archive)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_rel(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _escape_error(archive, info.filename)
        with (
            Progress(progress, sum(i.file_size for i in infos), f"extract {archive.name}") as bar,
            _Writer(into) as writer,
        ):
            if space is not None:
                space._drain = writer.drain
            for info in infos:
                rel = _safe_rel(info.filename, archive)
                if not rel.parts:
                    continue
                target = guard.target(rel, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if space is not None:
                    space.take(info.file_size, info.filename)
                executable = bool((info.external_attr >> 16) & 0o100)
                mtime = datetime(*info.date_time).timestamp()
                if info.file_size <= PREFETCH_MAX:
                    writer.submit(rel, zf.read(info), executable, mtime, target)
                else:
                    writer.drain()
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as source, open(target, "xb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                    os.chmod(target, 0o755 if executable else 0o644)
                    os.utime(target, (mtime, mtime))
                bar.update(info.file_size)


def unpacked_size(archive: Path, kind: str) -> int:
    """Bytes the archive takes at least once extracted, known without reading it through.

    A zip lists its sizes; a plain tar is not smaller than its contents. A ``.tar.gz`` gives no honest
    figure: its trailer holds the unpacked size modulo 4 GiB, of its last gzip member only, so the compressed
    size is what it is known to need at least, and :class:`Space` checks each member as it comes.
    """
    size = archive.stat().st_size
    if kind == ".zip":
        with zipfile.ZipFile(archive) as zf:
            return sum(i.file_size for i in zf.infolist())
    return size
