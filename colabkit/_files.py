"""Files that are never half-written: atomic replace through a tagged temp file, and tolerant JSON reads.

Every file colabkit writes for later (``summary.json``, checkpoints and their manifest, staging
manifests, the requirements stamp) goes through :func:`replacing`: the bytes go to a hidden sibling
``.<name>.tmp-<machine>-<pid>-<random>``, are flushed and fsynced, renamed over the target with
``os.replace``, and the folder is fsynced. A writer killed midway leaves only the temp file, whose name
says whose it is, so :func:`remove_abandoned` can clear it later without touching a write that another
process, or another VM sharing the same Drive folder, is making right now.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from . import _procs, _runtime

__all__ = [
    "cache_dir",
    "FOREIGN_TEMP_AGE_S",
    "TEMP",
    "abandoned",
    "fsync_dir",
    "load_json",
    "machine_tag",
    "read_json",
    "remove_abandoned",
    "replacing",
    "temp_sibling",
    "write_json",
    "write_text",
]

FOREIGN_TEMP_AGE_S = 24 * 3600.0  # a temp file of another machine is abandoned after this long
# ".<final>.tmp-<machine>-<pid>-<random>"; versions before 0.1 wrote no machine tag
TEMP = re.compile(r"^\.(?P<final>.+)\.tmp-(?:(?P<machine>[^-]+)-)?(?P<pid>\d+)-[0-9a-f]+$")


def machine_tag() -> str:
    """This machine: its host name and boot id, so another VM sharing a Drive folder is never mistaken for it.

    Host names tell containers apart (they share a kernel and so a boot id, but not pids); the boot id
    tells this boot from an earlier one with the same host name.
    """
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"
    boot = re.sub(r"[^0-9a-f]", "", _runtime.boot_id().lower())[:8]
    return f"{host}_{boot}"


_writing: set[str] = set()  # the temp files this process is writing now (see abandoned)


def cache_dir() -> Path:
    """colabkit's own folder on this machine's disk: ``$COLABKIT_CACHE``, else ``~/.cache/colabkit``."""
    cache = os.environ.get("COLABKIT_CACHE")
    return Path(cache).expanduser() if cache else Path.home() / ".cache" / "colabkit"


def temp_sibling(path: Path) -> Path:
    """``<folder>/.<name>.tmp-<machine>-<pid>-<random>``: where a write to ``path`` goes first."""
    return path.with_name(f".{path.name}.tmp-{machine_tag()}-{os.getpid()}-{secrets.token_hex(4)}")


def abandoned(path: Path, machine: str | None, pid: int, *, now: float | None = None) -> bool:
    """Whether a temp file (or folder) written by ``pid`` on ``machine`` can be removed.

    On this machine: when its writer is gone, or is this process with no write of that file under way (a
    write that failed on a Drive that died could not remove its temp then). Another machine's writer cannot be asked (it may be
    another VM sharing the same Drive folder, saving right now), so its temp files go only when they
    have not changed for :data:`FOREIGN_TEMP_AGE_S`.
    """
    if machine == machine_tag():
        if pid == os.getpid():  # this process: abandoned unless a write of it is under way (one that failed on a
            return path.name not in _writing  # Drive that died could not remove its temp then)
        return not _procs.alive(pid)
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False
    return age > FOREIGN_TEMP_AGE_S


def remove_abandoned(folder: Path, final: str | None = None) -> None:
    """Delete the temp files in ``folder`` (of the write to ``final`` only, if given) whose writer is gone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = TEMP.match(name)
        if m is None or (final is not None and m.group("final") != final):
            continue
        entry = folder / name
        if abandoned(entry, m.group("machine"), int(m.group("pid"))):
            with contextlib.suppress(OSError):
                entry.unlink()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a file system that refuses (some FUSE ones) is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # the rename is still atomic
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through its temp sibling: flushed, fsynced, renamed over ``path``, folder fsynced.

    If the block raises (or the process is killed), ``path`` keeps its old content and the temp file is
    removed (or, after a kill, left for :func:`remove_abandoned`).
    """
    temp = temp_sibling(path)
    _writing.add(temp.name)
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
    finally:
        _writing.discard(temp.name)
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (see :func:`replacing`)."""
    with replacing(path, "w") as f:
        f.write(text)


def write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """Replace ``path`` with ``data`` as JSON atomically (see :func:`replacing`)."""
    with replacing(path, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")


def load_json(path: Path) -> Any:
    """The JSON value in ``path``.

    Raises:
        OSError: the file cannot be read (missing, or the Drive under it died: ``errno`` says which).
        ValueError: it is not JSON.
    """
    return json.loads(path.read_text(encoding="utf-8"))


def read_json(path: Path, of: type = dict) -> Any:
    """The JSON value in ``path`` if it is an ``of`` (a dict unless asked); ``None`` when it is missing,
    unreadable, not JSON or of another type."""
    try:
        data = load_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, of) else None
