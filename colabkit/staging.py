"""Stage a dataset from Drive to the VM's local disk: one archive across Drive instead of thousands of files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .checkpoint import _TEMP, _abandoned, _machine_tag, _temp_suffix
from .errors import StageError

__all__ = ["stage"]

log = logging.getLogger(__name__)

STAMP = ".colabkit-stage.json"  # in the staged folder: what it was made from
FILES = ".colabkit-stage-files.json"  # in the staged folder: every entry stage() put there
ARCHIVE_SUFFIX = ".colabkit.tar"  # beside a source folder on Drive: its contents packed once
INDEX_SUFFIX = ".colabkit.json"  # beside the archive: the manifest it was packed from
_PARTIAL = ".colabkit-partial-"
_OLD = ".colabkit-old-"
_ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
_SLACK_BYTES = 64 * 2**20  # room left free after staging, for the rest of the VM
_PREFETCH_MAX = 1 << 20  # files up to this size are read ahead in parallel while packing
_WORKERS = 16  # Drive answers file opens slowly but in parallel
_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Entry:
    rel: str  # POSIX relative path
    size: int  # bytes; -1 for a folder
    mtime_ns: int


# ---------------------------------------------------------------------------- probes and paths


def _disk_free(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (its nearest existing ancestor)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in _ARCHIVES:
        if name.endswith(suffix):
            return suffix
    return None


def _dataset_name(src: Path) -> str:
    kind = _archive_kind(src) if src.is_file() else None
    return src.name[: -len(kind)] if kind else src.name


def _default_root() -> Path:
    from .runtime import detect, sysroot

    if detect().is_colab:
        return sysroot() / "content" / "data"
    cache = os.environ.get("COLABKIT_CACHE")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "colabkit"
    return base / "data"


# ---------------------------------------------------------------------------- manifests


def _scan(folder: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under ``folder`` with its POSIX relative path; links are not followed."""
    stack = [(folder, "")]
    while stack:
        here, prefix = stack.pop()
        with os.scandir(here) as it:
            for item in it:
                rel = f"{prefix}{item.name}"
                yield rel, item
                if item.is_dir(follow_symlinks=False):
                    stack.append((Path(item.path), rel + "/"))


def _walk(folder: Path) -> list[_Entry]:
    """Every file and folder under ``folder`` (symlinks and special files skipped), sorted."""
    entries: list[_Entry] = []
    for rel, item in _scan(folder):
        st = item.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            entries.append(_Entry(rel, -1, st.st_mtime_ns))
        elif stat.S_ISREG(st.st_mode):
            entries.append(_Entry(rel, st.st_size, st.st_mtime_ns))
    entries.sort(key=lambda e: e.rel)
    return entries


def _fingerprint(entries: list[_Entry]) -> str:
    digest = hashlib.sha256()
    for e in entries:
        if e.size >= 0:  # a folder's mtime changes when Drive syncs it; its files are what count
            digest.update(f"{e.rel}\0{e.size}\0{e.mtime_ns}\n".encode())
        else:
            digest.update(f"{e.rel}/\n".encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _replacing(path: Path, mode: str) -> Iterator[IO[Any]]:
    """Write through a hidden temp sibling (``.<name>.tmp-<machine>-<pid>-<random>``), fsynced then renamed over ``path``.

    A writer killed midway leaves only the temp file, which the next packing removes once it is abandoned
    (its writer on this machine is gone, or another machine's temp file is a day old).
    """
    temp = path.with_name(f".{path.name}{_temp_suffix()}")
    try:
        with open(temp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with _replacing(path, "w") as f:
        json.dump(data, f)


# ---------------------------------------------------------------------------- progress


class _Progress:
    """A tqdm bar when someone is watching, else nothing; tqdm is imported only then."""

    def __init__(self, enabled: bool, total: int | None, desc: str, unit: str = "B") -> None:
        self._bar = None
        if not enabled:
            return
        from .runtime import display_mode

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

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _CountingReader(io.RawIOBase):
    """Wraps a binary file and reports bytes read to a progress bar."""

    def __init__(self, raw: IO[bytes], progress: _Progress) -> None:
        self._raw = raw
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._progress.update(n)
        return n or 0


# ---------------------------------------------------------------------------- safe extraction


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
        self._pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="colabkit-stage")
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
        while len(self._pending) > 8 * _WORKERS:
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


def _extract_tar(archive: Path, into: Path, progress: bool) -> None:
    filter_kw: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    links_seen = False
    with (
        open(archive, "rb", buffering=0) as raw,
        _Progress(progress, archive.stat().st_size, f"extract {archive.name}") as bar,
        _Writer(into) as writer,
    ):
        reader = io.BufferedReader(_CountingReader(raw, bar), buffer_size=_CHUNK)
        with tarfile.open(fileobj=reader, mode="r|*") as tar:
            for member in tar:
                _check_tar_member(member, archive)
                links_seen = links_seen or member.issym() or member.islnk()
                rel = _safe_rel(member.name, archive)
                if member.isfile() and member.size <= _PREFETCH_MAX and not links_seen and rel.parts:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    writer.submit(rel, data, bool(member.mode & 0o100), member.mtime)
                    continue
                writer.drain()  # links and large files go through tarfile's own checks, in order
                try:
                    tar.extract(member, into, **filter_kw)
                except tarfile.TarError as exc:  # the data filter's own refusals
                    raise _escape_error(archive, member.name) from exc


def _extract_zip(archive: Path, into: Path, progress: bool) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_rel(info.filename, archive)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _escape_error(archive, info.filename)
        with _Progress(progress, sum(i.file_size for i in infos), f"extract {archive.name}") as bar, _Writer(into) as writer:
            for info in infos:
                rel = _safe_rel(info.filename, archive)
                if info.is_dir() or info.file_size > _PREFETCH_MAX or not rel.parts:
                    writer.drain()
                    zf.extract(info, into)
                else:
                    mtime = datetime(*info.date_time).timestamp()
                    writer.submit(rel, zf.read(info), bool((info.external_attr >> 16) & 0o100), mtime)
                bar.update(info.file_size)


def _unpacked_size(archive: Path, kind: str) -> int:
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


# ---------------------------------------------------------------------------- packing and copying


def _read_small(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _prefetched(folder: Path, files: list[_Entry], pool: ThreadPoolExecutor) -> Iterator[tuple[_Entry, bytes | None]]:
    """Each file with its bytes, read ahead on the pool (``None`` for large files, read by the caller)."""
    window: deque[tuple[_Entry, Future[bytes] | None]] = deque()
    it = iter(files)
    for entry in it:
        window.append((entry, pool.submit(_read_small, folder / entry.rel) if entry.size <= _PREFETCH_MAX else None))
        if len(window) >= 4 * _WORKERS:
            break
    for entry in it:
        head, fut = window.popleft()
        yield head, fut.result() if fut else None
        window.append((entry, pool.submit(_read_small, folder / entry.rel) if entry.size <= _PREFETCH_MAX else None))
    while window:
        head, fut = window.popleft()
        yield head, fut.result() if fut else None


def _pack(folder: Path, entries: list[_Entry], archive: Path, progress: bool) -> None:
    """Write ``folder`` as an uncompressed tar at ``archive`` (temp file, then rename)."""
    files = [e for e in entries if e.size >= 0]
    with (
        _replacing(archive, "wb") as out,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ThreadPoolExecutor(_WORKERS, thread_name_prefix="colabkit-stage") as pool,
        _Progress(progress, len(files), f"pack {folder.name}", unit="file") as bar,
    ):
        for e in entries:
            if e.size < 0:
                info = tarfile.TarInfo(e.rel)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, e.mtime_ns / 1e9
                tar.addfile(info)
        for e, data in _prefetched(folder, files, pool):
            info = tarfile.TarInfo(e.rel)
            info.mode, info.mtime = 0o644, e.mtime_ns / 1e9
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                with open(folder / e.rel, "rb") as f:
                    info.size = os.fstat(f.fileno()).st_size
                    tar.addfile(info, f)
            bar.update(1)


def _copy_one(src: Path, dst: Path, mtime_ns: int) -> None:
    shutil.copyfile(src, dst)
    os.utime(dst, ns=(mtime_ns, mtime_ns))


def _copy_direct(folder: Path, entries: list[_Entry], into: Path, progress: bool) -> None:
    """Copy file by file, many at once (for a read-only Drive, where no archive can be written)."""
    for e in entries:
        if e.size < 0:
            (into / e.rel).mkdir(parents=True, exist_ok=True)
    files = [e for e in entries if e.size >= 0]
    with (
        ThreadPoolExecutor(_WORKERS, thread_name_prefix="colabkit-stage") as pool,
        _Progress(progress, sum(e.size for e in files), f"copy {folder.name}") as bar,
    ):
        futures = [(e, pool.submit(_copy_one, folder / e.rel, into / e.rel, e.mtime_ns)) for e in files]
        try:
            for e, fut in futures:
                fut.result()
                bar.update(e.size)
        except BaseException:
            for _, fut in futures:
                fut.cancel()
            raise


def _archive_for(folder: Path, entries: list[_Entry], fingerprint: str, progress: bool) -> Path | None:
    """The up-to-date archive beside ``folder`` (packing it if needed), or None when Drive refuses writes."""
    archive = folder.with_name(folder.name + ARCHIVE_SUFFIX)
    index = folder.with_name(folder.name + INDEX_SUFFIX)
    known = _read_json(index)
    if known and known.get("fingerprint") == fingerprint:
        try:
            st = archive.stat()
            if st.st_size == known.get("archive_size") and st.st_mtime_ns == known.get("archive_mtime_ns"):
                return archive
        except OSError:
            pass
    for written in (archive, index):  # temp files of a packing that was killed
        for leftover in folder.parent.glob(f".{written.name}.tmp-*"):
            m = _TEMP.match(leftover.name)
            if m and m.group("final") == written.name and _abandoned(leftover, m.group("machine"), int(m.group("pid"))):
                with contextlib.suppress(OSError):
                    leftover.unlink()
    log.info("packing %s into %s", folder, archive)
    try:
        _pack(folder, entries, archive, progress)
        st = archive.stat()
        _write_json_atomic(
            index,
            {
                "schema": 1,
                "fingerprint": fingerprint,
                "archive_size": st.st_size,
                "archive_mtime_ns": st.st_mtime_ns,
                "files": [[e.rel, e.size, e.mtime_ns] for e in entries],
            },
        )
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            log.info("cannot write %s (%s): copying file by file", archive, exc.strerror)
            return None
        raise
    return archive


# ---------------------------------------------------------------------------- the public call


def _sibling(dest: Path, kind: str) -> Path:
    """``.<dest>.colabkit-partial-<machine>-<pid>`` (or ``-old-``): a temp folder beside ``dest``."""
    return dest.with_name(f".{dest.name}{kind}{_machine_tag()}-{os.getpid()}")


def _clear_leftovers(dest: Path) -> None:
    """Remove temp siblings of ``dest`` left by stagings that were killed (on this machine, or a day ago)."""
    parent = dest.parent
    if not parent.is_dir():
        return
    for prefix in (f".{dest.name}{_PARTIAL}", f".{dest.name}{_OLD}"):
        for leftover in parent.glob(f"{prefix}*"):
            machine, _, pid = leftover.name[len(prefix):].rpartition("-")  # older versions wrote the pid only
            if pid.isdigit() and _abandoned(leftover, machine or None, int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def _listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` as a POSIX relative path, folders with a trailing ``/``; links not followed."""
    return sorted(rel + "/" if item.is_dir(follow_symlinks=False) else rel for rel, item in _scan(folder))


def _unknown_entries(target: Path) -> list[str]:
    """Entries in a staged folder that stage() did not put there (a folder counts once, not its contents)."""
    try:
        recorded = json.loads((target / FILES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    known = set(recorded) if isinstance(recorded, list) else set()
    known.update((STAMP, FILES))
    unknown: list[str] = []
    unknown_dirs: set[str] = set()
    for rel in _listing(target):
        parts = rel.rstrip("/").split("/")
        if any("/".join(parts[:i]) + "/" in unknown_dirs for i in range(1, len(parts))):
            continue  # inside a folder already reported
        if rel not in known:
            unknown.append(rel)
            if rel.endswith("/"):
                unknown_dirs.add(rel)
    return unknown


def _check_space(src: Path, dest: Path, needed: int) -> None:
    free = _disk_free(dest.parent)
    if needed + _SLACK_BYTES > free:
        raise StageError(
            f"Not enough local disk to stage {src}: it needs {_human(needed)}, "
            f"{dest.parent} has {_human(free)} free",
            f"Free at least {_human(needed + _SLACK_BYTES - free)} on the VM (delete old copies under "
            f"{dest.parent}), stage a smaller subset, or pass dest= on a disk with more room.",
            needed_bytes=needed,
            free_bytes=free,
        )


def stage(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Copy a dataset from Drive to the VM's local disk once, and return the local folder.

    A folder is packed once into ``<folder>.colabkit.tar`` beside it on Drive (re-packed when a file
    in it changes) and that single archive is extracted locally: one large file crosses Drive far faster
    than thousands of small ones. ``.zip``, ``.tar``, ``.tar.gz`` and ``.tgz`` files are extracted
    directly; any other file is copied. Everything lands in a hidden temp folder first and is renamed
    into place, so an interrupted staging never counts as done. A second call with the same source
    does nothing. When the source changed, the staged folder is replaced, but only if it holds nothing
    but what ``stage()`` put there (recorded in ``.colabkit-stage-files.json``): files you added to it
    are never deleted unless you pass ``overwrite=True``.

    Args:
        src: the dataset on Drive, e.g. ``"/content/drive/MyDrive/data/images"`` or ``"images.zip"``.
        dest: the local folder; default ``/content/data/<name>`` on Colab, else
            ``$COLABKIT_CACHE/data/<name>`` (``~/.cache/colabkit/data/<name>``).
        progress: show a progress bar (only in a notebook or an interactive terminal).
        overwrite: replace a folder an earlier ``stage()`` made even if files were added to it
            (they are deleted). A folder ``stage()`` did not make is never replaced.

    Returns:
        The local folder holding the dataset.

    Raises:
        StageError: ``src`` is missing, ``dest`` holds other files (a folder ``stage()`` did not make,
            or files added to a staged folder whose source changed), the local disk is too small
            (checked before copying; ``needed_bytes`` and ``free_bytes`` say by how much), or an archive
            member would land outside ``dest``.

    Examples:
        >>> path = colabkit.stage("/content/drive/MyDrive/data/images")
        >>> path
        PosixPath('/content/data/images')
    """
    source = Path(src).expanduser().absolute()
    if not source.exists():
        raise StageError(
            f"Nothing to stage: {source} does not exist",
            "Check the path (Drive folders live under /content/drive/MyDrive/) and mount Drive first "
            "with colabkit.setup() or colabkit.mount().",
        )
    target = Path(dest).expanduser().absolute() if dest is not None else _default_root() / _dataset_name(source)
    if target == source or source in target.parents:
        raise StageError(
            f"Cannot stage {source} into itself ({target})",
            "Pass a dest= outside the source folder, or leave dest out for the default.",
        )
    stamp = _read_json(target / STAMP) if target.is_dir() else None
    if target.exists() and stamp is None and (not target.is_dir() or any(target.iterdir())):
        raise StageError(
            f"{target} already exists and was not made by colabkit.stage(); refusing to replace it",
            "Pass another dest=, or delete that folder yourself if you no longer need it.",
        )

    kind = _archive_kind(source) if source.is_file() else None
    if source.is_dir():
        entries = _walk(source)
        fingerprint = _fingerprint(entries)
        needed = sum(e.size for e in entries if e.size > 0)
    else:
        st = source.stat()
        entries = []
        fingerprint = f"{source.name}\0{st.st_size}\0{st.st_mtime_ns}"
        needed = _unpacked_size(source, kind) if kind else st.st_size
    if stamp and stamp.get("fingerprint") == fingerprint and stamp.get("source") == str(source):
        log.info("%s is already staged at %s (unchanged)", source, target)
        return target
    if stamp is not None and not overwrite:
        if not (target / FILES).is_file():
            raise StageError(
                f"{target} must be re-staged because {source} changed, but it was staged by an older colabkit "
                "that did not record its files, so files you added to it cannot be told apart",
                f"Move anything you added out of {target} and pass overwrite=True (everything left in it is "
                "deleted), or pass another dest=.",
            )
        unknown = _unknown_entries(target)
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise StageError(
                f"{target} must be re-staged because {source} changed, but it holds files stage() did not "
                f"put there: {shown}{more}; refusing to delete them",
                f"Move them out of {target}, or pass another dest=, or pass overwrite=True to replace the "
                "folder and delete them.",
            )

    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target)
    _check_space(source, target, needed)
    partial = _sibling(target, _PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        if source.is_dir():
            archive = _archive_for(source, entries, fingerprint, progress)
            if archive is not None:
                _extract_tar(archive, partial, progress)
            else:
                _copy_direct(source, entries, partial, progress)
        elif kind == ".zip":
            _extract_zip(source, partial, progress)
        elif kind:
            _extract_tar(source, partial, progress)
        else:
            _copy_direct(source.parent, [_Entry(source.name, needed, source.stat().st_mtime_ns)], partial, progress)
        listing = _listing(partial)  # before the temp file below appears in it
        with _replacing(partial / FILES, "w") as f:
            json.dump(listing, f)
        _write_json_atomic(
            partial / STAMP,
            {
                "schema": 2,
                "source": str(source),
                "fingerprint": fingerprint,
                "bytes": needed,
                "staged": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        if target.exists():
            old = _sibling(target, _OLD)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(partial, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
