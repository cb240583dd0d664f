"""Stage a dataset from Drive to the VM's local disk: one archive across Drive instead of thousands of files."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import stat
import tarfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import _files
from ._extract import PREFETCH_MAX, WORKERS, Progress, extract_tar, extract_zip, unpacked_size
from ._format import format_bytes
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
    from ._runtime import detect_runtime, sysroot

    if detect_runtime().is_colab:
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


# ---------------------------------------------------------------------------- packing and copying


def _read_small(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _prefetched(folder: Path, files: list[_Entry], pool: ThreadPoolExecutor) -> Iterator[tuple[_Entry, bytes | None]]:
    """Each file with its bytes, read ahead on the pool (``None`` for large files, read by the caller)."""
    window: deque[tuple[_Entry, Future[bytes] | None]] = deque()
    it = iter(files)
    for entry in it:
        window.append((entry, pool.submit(_read_small, folder / entry.rel) if entry.size <= PREFETCH_MAX else None))
        if len(window) >= 4 * WORKERS:
            break
    for entry in it:
        head, fut = window.popleft()
        yield head, fut.result() if fut else None
        window.append((entry, pool.submit(_read_small, folder / entry.rel) if entry.size <= PREFETCH_MAX else None))
    while window:
        head, fut = window.popleft()
        yield head, fut.result() if fut else None


def _pack(folder: Path, entries: list[_Entry], archive: Path, progress: bool) -> None:
    """Write ``folder`` as an uncompressed tar at ``archive`` (temp file, then rename)."""
    files = [e for e in entries if e.size >= 0]
    with (
        _files.replacing(archive, "wb") as out,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ThreadPoolExecutor(WORKERS, thread_name_prefix="colabkit-stage") as pool,
        Progress(progress, len(files), f"pack {folder.name}", unit="file") as bar,
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
        ThreadPoolExecutor(WORKERS, thread_name_prefix="colabkit-stage") as pool,
        Progress(progress, sum(e.size for e in files), f"copy {folder.name}") as bar,
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
    known = _files.read_json(index)
    if known and known.get("fingerprint") == fingerprint:
        try:
            st = archive.stat()
            if st.st_size == known.get("archive_size") and st.st_mtime_ns == known.get("archive_mtime_ns"):
                return archive
        except OSError:
            pass
    for written in (archive, index):  # temp files of a packing that was killed
        _files.remove_abandoned(folder.parent, written.name)
    log.info("packing %s into %s", folder, archive)
    try:
        _pack(folder, entries, archive, progress)
        st = archive.stat()
        _files.write_json(
            index,
            {
                "schema": 1,
                "fingerprint": fingerprint,
                "archive_size": st.st_size,
                "archive_mtime_ns": st.st_mtime_ns,
                "files": [[e.rel, e.size, e.mtime_ns] for e in entries],
            },
            indent=None,
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
    return dest.with_name(f".{dest.name}{kind}{_files.machine_tag()}-{os.getpid()}")


def _clear_leftovers(dest: Path) -> None:
    """Remove temp siblings of ``dest`` left by stagings that were killed (on this machine, or a day ago)."""
    parent = dest.parent
    if not parent.is_dir():
        return
    for prefix in (f".{dest.name}{_PARTIAL}", f".{dest.name}{_OLD}"):
        for leftover in parent.glob(f"{prefix}*"):
            machine, _, pid = leftover.name[len(prefix):].rpartition("-")  # older versions wrote the pid only
            if pid.isdigit() and _files.abandoned(leftover, machine or None, int(pid)):
                shutil.rmtree(leftover, ignore_errors=True)


def _listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` as a POSIX relative path, folders with a trailing ``/``; links not followed."""
    return sorted(rel + "/" if item.is_dir(follow_symlinks=False) else rel for rel, item in _scan(folder))


def _unknown_entries(target: Path) -> list[str]:
    """Entries in a staged folder that stage() did not put there (a folder counts once, not its contents)."""
    recorded = _files.read_json(target / FILES, list)
    known = set(recorded) if recorded is not None else set()
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
            f"Not enough local disk to stage {src}: it needs {format_bytes(needed)}, "
            f"{dest.parent} has {format_bytes(free)} free",
            f"Free at least {format_bytes(needed + _SLACK_BYTES - free)} on the VM (delete old copies under "
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
    stamp = _files.read_json(target / STAMP) if target.is_dir() else None
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
        needed = unpacked_size(source, kind) if kind else st.st_size
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
                extract_tar(archive, partial, progress)
            else:
                _copy_direct(source, entries, partial, progress)
        elif kind == ".zip":
            extract_zip(source, partial, progress)
        elif kind:
            extract_tar(source, partial, progress)
        else:
            _copy_direct(source.parent, [_Entry(source.name, needed, source.stat().st_mtime_ns)], partial, progress)
        listing = _listing(partial)  # before the temp file below appears in it
        _files.write_json(partial / FILES, listing, indent=None)
        _files.write_json(
            partial / STAMP,
            {
                "schema": 2,
                "source": str(source),
                "fingerprint": fingerprint,
                "bytes": needed,
                "staged": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            indent=None,
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
