"""Unpacking archives safely: tar and zip members checked before they are written, small files written in parallel.

A member whose path or link target would land outside the destination, or that is a device or FIFO, is
refused with a ``StageError`` before anything of it is written. Small files go to disk on a thread pool
(on a VM disk each file creation costs most of the time); links and large files go through tarfile's own
extraction, in order, with ``tarfile.data_filter`` where the Python has it.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
import zipfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .errors import StageError

__all__ = ["PREFETCH_MAX", "WORKERS", "Progress", "extract_tar", "extract_zip", "unpacked_size"]

PREFETCH_MAX = 1 << 20  # files up to this size are handled whole, in parallel
WORKERS = 16  # Drive answers file opens slowly but in parallel; a VM disk creates files faster in parallel
_CHUNK = 1 << 20


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
    """The member path inside the destination, or StageError when it would land outside it."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or (rel.parts and ":" in rel.parts[0]):
        raise _escape_error(archive, name)
    return rel


def _escape_error(archive: Path, name: str) -> StageError:
    return StageError(
        f"Refusing to extract {archive}: member {name!r} would be written outside the destination",
        "Only stage archives you trust; re-create this one with relative paths inside a single folder.",
    )


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    rel = _safe_rel(member.name, archive)
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = rel.parent if member.issym() else PurePosixPath()
        depth = 0
        for part in (base / target).parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if target.is_absolute() or depth < 0:
            raise _escape_error(archive, f"{member.name} -> {member.linkname}")
    elif not (member.isfile() or member.isdir()):
        raise StageError(
            f"Refusing to extract {archive}: member {member.name!r} is a device or FIFO",
            "Stage archives of plain files and folders only.",
        )


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

    def submit(self, rel: PurePosixPath, data: bytes, executable: bool, mtime: float) -> None:
        path = self.parent(rel) / rel.name
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


def extract_tar(archive: Path, into: Path, progress: bool) -> None:
    filter_kw: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    links_seen = False
    with (
        open(archive, "rb", buffering=0) as raw,
        Progress(progress, archive.stat().st_size, f"extract {archive.name}") as bar,
        _Writer(into) as writer,
    ):
        reader = io.BufferedReader(_CountingReader(raw, bar), buffer_size=_CHUNK)
        with tarfile.open(fileobj=reader, mode="r|*") as tar:
            for member in tar:
                _check_tar_member(member, archive)
                links_seen = links_seen or member.issym() or member.islnk()
                rel = _safe_rel(member.name, archive)
                if member.isfile() and member.size <= PREFETCH_MAX and not links_seen and rel.parts:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    writer.submit(rel, data, bool(member.mode & 0o100), member.mtime)
                    continue
                writer.drain()  # links and large files go through tarfile's own checks, in order
                try:
                    tar.extract(member, into, **filter_kw)
                except tarfile.TarError as exc:  # the data filter's own refusals
                    raise _escape_error(archive, member.name) from exc


def extract_zip(archive: Path, into: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_rel(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _escape_error(archive, info.filename)
        with Progress(progress, sum(i.file_size for i in infos), f"extract {archive.name}") as bar, _Writer(into) as writer:
            for info in infos:
                rel = _safe_rel(info.filename, archive)
                if info.is_dir() or info.file_size > PREFETCH_MAX or not rel.parts:
                    writer.drain()
                    zf.extract(info, into)
                else:
                    mtime = datetime(*info.date_time).timestamp()
                    writer.submit(rel, zf.read(info), bool((info.external_attr >> 16) & 0o100), mtime)
                bar.update(info.file_size)


def unpacked_size(archive: Path, kind: str) -> int:
    """Bytes the archive takes once extracted (best estimate without reading it through)."""
    size = archive.stat().st_size
    if kind == ".zip":
        with zipfile.ZipFile(archive) as zf:
            return sum(i.file_size for i in zf.infolist())
    if kind in (".tar.gz", ".tgz"):
        with open(archive, "rb") as f:  # gzip keeps the unpacked size mod 2**32 in its last 4 bytes
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        return max(size, isize)
    return size
