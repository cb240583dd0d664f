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
from typing import Any

from . import _display, _files
from ._extract import PREFETCH_MAX, WORKERS, Progress, Space, extract_tar, extract_zip, unpacked_size
from ._format import format_bytes
from .errors import MountError, StageError

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
    base = _files.cache_dir()
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


def _copy_direct(folder: Path, entries: list[_Entry], into: Path, progress: bool, space: Space | None = None) -> None:
    """Copy file by file, many at once (for a read-only Drive, where no archive can be written)."""
    for e in entries:
        if e.size < 0:
            (into / e.rel).mkdir(parents=True, exist_ok=True)
    files = [e for e in entries if e.size >= 0]
    if space is not None:
        for e in files:  # the sizes are known: all of it is checked before the first byte is copied
            space.take(e.size, e.rel)
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


def _mount_fault(exc: OSError, source: Path, target: Path) -> None:
    """When Drive died or hangs under the copy, raise the MountError that says so with the remount fix, from
    ``exc``; otherwise return (the caller re-raises ``exc``)."""
    from . import _drive

    try:
        _drive.require_mounted(source, purpose="stage from it")
        _drive.require_mounted(target, purpose="stage into it")
    except MountError as broken:
        raise broken from exc


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


def _record(folder: Path) -> list[list[Any]]:
    """Every entry under ``folder`` with what tells a changed one cheaply: ``[rel, size, mtime_ns]``; a folder
    is ``[rel + "/", -1, 0]``. Links are not followed."""
    out: list[list[Any]] = []
    for rel, item in _scan(folder):
        st = item.stat(follow_symlinks=False)
        out.append([rel + "/", -1, 0] if stat.S_ISDIR(st.st_mode) else [rel, st.st_size, st.st_mtime_ns])
    out.sort(key=lambda e: e[0])
    return out


def _recorded(target: Path) -> dict[str, tuple[int, int] | None] | None:
    """What stage() put in ``target`` (rel → size and mtime, ``None`` where an older colabkit kept names only),
    or None when no list was kept."""
    data = _files.read_json(target / FILES, object)
    if isinstance(data, list):  # colabkit before 0.2: names only
        return {n: None for n in data if isinstance(n, str)}
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        found: dict[str, tuple[int, int] | None] = {}
        for e in data["entries"]:
            if isinstance(e, list) and len(e) == 3 and isinstance(e[0], str):
                found[e[0]] = (int(e[1]), int(e[2]))
        return found
    return None


def _damage(target: Path, recorded: dict[str, tuple[int, int] | None]) -> tuple[list[str], list[str]]:
    """Entries of a staged copy that are missing, and files whose size or mtime changed: one lstat each."""
    missing: list[str] = []
    changed: list[str] = []
    for rel, facts in recorded.items():
        try:
            st = os.lstat(target / rel.rstrip("/"))
        except OSError:
            missing.append(rel)
            continue
        if facts is not None and facts[0] >= 0 and (st.st_size, st.st_mtime_ns) != facts:
            changed.append(rel)
    return missing, changed


def _unknown_entries(target: Path) -> list[str]:
    """Entries in a staged folder that stage() did not put there (a folder counts once, not its contents)."""
    known = set(_recorded(target) or ())
    known.update((STAMP, FILES))
    unknown: list[str] = []
    unknown_dirs: set[str] = set()
    for rel in sorted(r[0] for r in _record(target)):
        parts = rel.rstrip("/").split("/")
        if any("/".join(parts[:i]) + "/" in unknown_dirs for i in range(1, len(parts))):
            continue  # inside a folder already reported
        if rel not in known:
            unknown.append(rel)
            if rel.endswith("/"):
                unknown_dirs.add(rel)
    return unknown


def _slack(folder: Path) -> int:
    """Room left free after staging, for the rest of the VM: 64 MiB, or a twentieth of a smaller disk."""
    try:
        total = shutil.disk_usage(folder).total
    except OSError:
        return _SLACK_BYTES
    return min(_SLACK_BYTES, total // 20)


def _check_space(src: Path, dest: Path, needed: int) -> None:
    free = _disk_free(dest.parent)
    slack = _slack(dest.parent)
    if needed + slack > free:
        raise StageError(
            f"Not enough local disk to stage {src}: it needs {format_bytes(needed)}, "
            f"{dest.parent} has {format_bytes(free)} free",
            f"Free at least {format_bytes(needed + slack - free)} on the VM (delete old copies under "
            f"{dest.parent}), stage a smaller subset, or pass dest= on a disk with more room.",
            needed_bytes=needed,
            free_bytes=free,
        )


def _default_target(source: Path) -> Path:
    """``<root>/<name>``, unless it holds a copy of another source: then ``<root>/<name>-<8 hex of the path>``."""
    base = _default_root() / _dataset_name(source)
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return base
    stamp = _files.read_json(base / STAMP) if base.is_dir() else None
    if stamp is not None and stamp.get("source") == str(source):
        return base
    return base.with_name(f"{base.name}-{hashlib.sha256(str(source).encode()).hexdigest()[:8]}")


def _shown(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _kaggle_input(path: Path) -> bool:
    from . import _kaggle, _runtime

    return _runtime.detect_runtime().is_kaggle and _kaggle.is_input(path)


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
    does nothing, after checking (one ``lstat`` per file) that the copy is whole: missing files are staged
    again, files changed in the copy are reported. When the source changed, the staged folder is replaced,
    but only if it holds nothing but what ``stage()`` put there (recorded, with sizes and times, in
    ``.colabkit-stage-files.json``): files you added to it are never deleted unless you pass
    ``overwrite=True``. The free disk space is checked before the copy starts (as far as the source tells
    its size) and again before every file is written: a full disk stops the staging with a ``StageError``
    before the file that does not fit, and nothing half-staged stays. Names are kept as they are.

    Args:
        src: the dataset on Drive, e.g. ``"/content/drive/MyDrive/data/images"`` or ``"images.zip"``. A folder
            under Kaggle's ``/kaggle/input`` is local already: without ``dest`` it is returned as it is.
        dest: the local folder; default ``/content/data/<name>`` on Colab, else
            ``$COLABKIT_CACHE/data/<name>`` (``~/.cache/colabkit/data/<name>``); when that holds a copy of
            another source (``train/images`` and ``val/images``), ``<name>-<8 hex digits of the source path>``.
        progress: show a progress bar (only in a notebook or an interactive terminal).
        overwrite: stage again from scratch, replacing a folder an earlier ``stage()`` made: a damaged
            copy is restored, files added to it are deleted, a copy of another source is replaced. A
            folder ``stage()`` did not make is never replaced.

    Returns:
        The local folder holding the dataset.

    Raises:
        StageError: ``src`` is missing, ``dest`` holds other files (a folder ``stage()`` did not make, a
            copy of another source, files changed in the copy, or files added to a staged folder whose
            source changed), the local disk is too small (``needed_bytes`` and ``free_bytes`` say by how
            much), or an archive member would land outside ``dest``.
        MountError: ``src`` or ``dest`` is under a Drive mountpoint that is not mounted, dead or hung.

    Examples:
        >>> path = colabkit.stage("/content/drive/MyDrive/data/images")
        >>> path
        PosixPath('/content/data/images')
    """
    from . import _drive

    source = Path(src).expanduser().absolute()
    _drive.require_mounted(source, purpose="stage from it")
    if not source.exists():
        raise StageError(
            f"Nothing to stage: {source} does not exist",
            "Check the path (Drive folders live under /content/drive/MyDrive/) and mount Drive first "
            "with colabkit.setup() or colabkit.mount().",
        )
    if dest is None and source.is_dir() and _kaggle_input(source):
        # a Kaggle dataset is on the machine's own disk already: nothing to copy
        _display.note(f"colabkit: {source} is a Kaggle dataset on local disk already: using it where it is")
        return source
    target = Path(dest).expanduser().absolute() if dest is not None else _default_target(source)
    _drive.require_mounted(target, purpose="stage into it")
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
    if stamp is not None and stamp.get("source") != str(source) and not overwrite:
        raise StageError(
            f"{target} holds a copy of {stamp.get('source')}, staged earlier, not of {source}; refusing to "
            "replace it",
            f"Pass another dest= (or none: stage() picks a folder of its own for {source.name}), or "
            "overwrite=True to replace that copy.",
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
    unchanged = stamp is not None and stamp.get("fingerprint") == fingerprint and stamp.get("source") == str(source)
    if unchanged and not overwrite:
        recorded = _recorded(target)
        missing, changed = _damage(target, recorded) if recorded is not None else ([], [])
        if changed:
            raise StageError(
                f"{target} is a copy of {source} whose files changed since it was staged: {_shown(changed)}; "
                "refusing to overwrite them",
                "Pass overwrite=True to restore the copy from the source (the changed files are replaced), or "
                "pass another dest=.",
            )
        if not missing:
            log.info("%s is already staged at %s (unchanged)", source, target)
            return target
        _display.note(
            f"colabkit: {len(missing)} {'entry' if len(missing) == 1 else 'entries'} of the staged copy {target} "
            f"{'is' if len(missing) == 1 else 'are'} missing ({_shown(missing)}): "
            "staging it again"
        )
    if stamp is not None and not overwrite:
        why = "it lost files" if unchanged else f"{source} changed"
        if not (target / FILES).is_file():
            raise StageError(
                f"{target} must be re-staged because {why}, but it was staged by an older colabkit "
                "that did not record its files, so files you added to it cannot be told apart",
                f"Move anything you added out of {target} and pass overwrite=True (everything left in it is "
                "deleted), or pass another dest=.",
            )
        unknown = _unknown_entries(target)
        if unknown:
            raise StageError(
                f"{target} must be re-staged because {why}, but it holds files stage() did not "
                f"put there: {_shown(unknown)}; refusing to delete them",
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
        space = Space(partial, source, slack=_slack(target.parent))
        try:
            if source.is_dir():
                archive = _archive_for(source, entries, fingerprint, progress)
                if archive is not None:
                    extract_tar(archive, partial, progress, space)
                else:
                    _copy_direct(source, entries, partial, progress, space)
            elif kind == ".zip":
                extract_zip(source, partial, progress, space)
            elif kind:
                extract_tar(source, partial, progress, space)
            else:
                one = [_Entry(source.name, st.st_size, st.st_mtime_ns)]
                _copy_direct(source.parent, one, partial, progress, space)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, StageError):
                raise space.error(os.path.basename(exc.filename or "") or "the next file") from exc
            if not isinstance(exc, StageError):
                _mount_fault(exc, source, target)
            raise
        record = _record(partial)  # before the files below appear in it
        _files.write_json(partial / FILES, {"schema": 2, "entries": record}, indent=None)
        _files.write_json(
            partial / STAMP,
            {
                "schema": 2,
                "source": str(source),
                "fingerprint": fingerprint,
                "bytes": sum(e[1] for e in record if e[1] > 0),
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
