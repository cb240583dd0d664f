"""Checkpoints that survive a disconnect: atomic save, keep the newest few, find the latest complete one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pickle
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import _files, _mounts
from .errors import CheckpointError, ColabkitWarning

__all__ = ["latest", "load", "save"]

log = logging.getLogger(__name__)

_SUFFIXES = (".pt", ".pkl")  # .pt: written by torch.save; .pkl: pickle
_SEQ = re.compile(r"^ckpt-(\d{6,})\.(?:pt|pkl)$")  # the numbered checkpoints save() writes
MANIFEST = ".colabkit-checkpoints.json"  # in the folder: every checkpoint save() wrote (named and numbered)
LOCK = ".colabkit-checkpoints.lock"  # in the folder: held while a save claims its name and updates the manifest


def _holds_tensors(obj: Any, depth: int = 0) -> bool:
    """True when torch is already imported and ``obj`` is, or contains, a tensor, module or optimizer."""
    torch = sys.modules.get("torch")
    if torch is None or depth > 6:
        return False
    try:
        if torch.is_tensor(obj) or isinstance(obj, (torch.nn.Module, torch.optim.Optimizer)):
            return True
    except AttributeError:  # a half-imported torch
        return False
    if isinstance(obj, dict):
        return any(_holds_tensors(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return any(_holds_tensors(v, depth + 1) for v in obj)
    return False


def _manifest(folder: Path) -> dict[str, Any] | None:
    """``.colabkit-checkpoints.json``: ``named`` (stem → file) and, since schema 2, ``numbered`` (the numbered
    files save() wrote, oldest first). ``None`` when missing or unreadable."""
    data = _files.read_json(folder / MANIFEST)
    if data is None:
        return None
    named = data.get("named") if isinstance(data.get("named"), dict) else {}
    named = {k: v for k, v in named.items() if isinstance(k, str) and isinstance(v, str) and v == f"{k}{Path(v).suffix}"}
    numbered = data.get("numbered")
    if isinstance(numbered, list):
        numbered = [n for n in numbered if isinstance(n, str) and _SEQ.match(n)]
    else:
        numbered = None  # schema 1: written before numbered files were listed
    return {"named": named, "numbered": numbered}


def _named(folder: Path) -> dict[str, str]:
    """The manifest: stem of each named checkpoint save() wrote → its file name. Unreadable means none."""
    data = _manifest(folder)
    return data["named"] if data is not None else {}


def _write_manifest(folder: Path, named: dict[str, str], numbered: list[str]) -> None:
    _files.write_json(
        folder / MANIFEST, {"schema": 2, "named": dict(sorted(named.items())), "numbered": numbered}, indent=1
    )


def _ours(folder: Path) -> tuple[list[Path], list[Path]]:
    """Checkpoints save() wrote in ``folder``: (numbered, named), each oldest first.

    Both come from the manifest. A folder whose manifest predates the list of numbered files (or has none)
    counts its ``ckpt-NNNNNN.pt``/``.pkl`` files as numbered for :func:`latest`; they are never pruned.
    Any other file (pretrained weights, a vocabulary pickle, your own ``ckpt-001000.pt``) is never listed.
    """
    try:
        entries = {e.name: e for e in os.scandir(folder)}
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    data = _manifest(folder)
    listed = data["numbered"] if data is not None else None
    numbered_names = listed if listed is not None else [n for n in entries if _SEQ.match(n)]
    named_names = set(data["named"].values()) if data is not None else set()

    def present(names: Any) -> list[tuple[int, str]]:
        out = []
        for name in names:
            entry = entries.get(name)
            try:
                if entry is not None and entry.is_file(follow_symlinks=False):
                    st = entry.stat()
                    if st.st_size > 0:  # a name claimed by a save still writing
                        out.append((st.st_mtime_ns, name))
            except OSError:  # vanished while listing
                continue
        return out

    numbered = sorted(present(numbered_names), key=lambda t: (_number(t[1]), t[0]))
    named = sorted(present(named_names))
    return [folder / n for _, n in numbered], [folder / n for _, n in named]


def _number(name: str) -> int:
    m = _SEQ.match(name)
    return int(m.group(1)) if m else -1


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[bool]:
    """One save at a time per folder on this machine: ``flock`` on ``.colabkit-checkpoints.lock``; yields
    whether the lock is held (a file system without locks says so once, as a warning)."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = True
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            warnings.warn(
                f"colabkit.save(): {folder} cannot be locked ({exc.strerror}); numbers are still claimed one "
                "by one, but the list of checkpoints may miss a save made at the same moment by another process",
                ColabkitWarning,
                stacklevel=5,
            )
        yield held
    finally:
        os.close(fd)  # releases the lock


def _claim(folder: Path, suffix: str, known: list[str], *, reserve: bool) -> Path:
    """A new numbered name, above every number in use; without the lock it is reserved by creating it
    empty (``O_EXCL``), which :func:`latest` skips until the save renames the real file over it."""
    used = [_number(n) for n in known]
    with contextlib.suppress(OSError):
        used += [_number(n) for n in os.listdir(folder) if _SEQ.match(n)]
    n = max(used, default=0) + 1
    while True:
        final = folder / f"ckpt-{n:06d}{suffix}"
        other = folder / f"ckpt-{n:06d}{'.pkl' if suffix == '.pt' else '.pt'}"
        if not other.exists():
            if not reserve:
                if not os.path.lexists(final):
                    return final
            else:
                try:
                    os.close(os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                    return final
                except FileExistsError:
                    pass
        n += 1


def save(obj: Any, dir: str | os.PathLike[str], *, keep: int | None = 3, name: str | None = None) -> Path:
    """Write a checkpoint atomically and keep only the newest ``keep`` numbered ones.

    The object goes to a hidden temp file in ``dir``, is flushed and fsynced, then renamed into place
    with ``os.replace`` (and the folder fsynced, see ``_files``), so a process killed mid-save never leaves a file
    that :func:`latest` would return. Objects holding tensors are written with ``torch.save`` (when torch
    is already imported) as ``.pt``; anything else is pickled as ``.pkl``.

    Only files ``save()`` wrote count as checkpoints, as listed in ``.colabkit-checkpoints.json`` in the
    folder (numbered and named): other files there (pretrained weights, a vocabulary pickle, your own
    ``ckpt-001000.pt``) are never pruned, never overwritten and never returned by :func:`latest`.

    Saves from several processes into one folder at once (two training runs, a run and the notebook) each
    get their own number: a lock in the folder (``.colabkit-checkpoints.lock``) makes claiming the number
    and updating the list one step, and the number is reserved on disk before the write. Two machines
    saving into one Drive folder at once are not coordinated: give each its own folder.

    Args:
        obj: what to save, e.g. ``{"step": 1200, "model": model.state_dict(), "opt": opt.state_dict()}``.
        dir: checkpoint folder, created if missing (put it on Drive to survive the VM).
        keep: how many numbered checkpoints to keep, newest first; ``None`` keeps all. Only numbered
            checkpoints listed as save()'s own are pruned; named ones never are: saving the same name
            again replaces the file.
        name: file stem (``"best"`` → ``best.pt``); default ``ckpt-000001``, ``ckpt-000002``, ...

    Returns:
        The path of the checkpoint written.

    Raises:
        ValueError: ``keep`` is below 1 or ``name`` holds a path separator.
        CheckpointError: the folder cannot be written (read-only, full) or ``obj`` cannot be pickled.
        MountError: the folder is under a Drive mountpoint that is not mounted (after ``flush()``), dead
            or hung: nothing is written there.

    Examples:
        >>> colabkit.save({"step": 1200, "model": model.state_dict()}, "checkpoints")
        PosixPath('checkpoints/ckpt-000004.pt')
        >>> colabkit.save({"model": model.state_dict()}, "checkpoints", name="best")
        PosixPath('checkpoints/best.pt')
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None to keep all), got {keep!r}")
    if name is not None and (not name or "/" in name or os.sep in name or name.startswith(".")):
        raise ValueError(f"name must be a plain file stem such as 'best', got {name!r}")
    folder = Path(dir)
    from . import _drive

    _drive.require_mounted(folder, purpose="save a checkpoint there")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _files.remove_abandoned(folder)
    except OSError as exc:
        raise _write_error(exc, folder, f"Cannot write checkpoints to {folder}", folder) from exc
    use_torch = _holds_tensors(obj)
    suffix = ".pt" if use_torch else ".pkl"
    with _locked_or_error(folder) as held:
        data = _manifest(folder) or {"named": {}, "numbered": None}
        named: dict[str, str] = dict(data["named"])
        numbered: list[str] = list(data["numbered"] or [])
        final = folder / f"{name}{suffix}" if name else _claim(folder, suffix, numbered, reserve=not held)
        try:
            with _files.replacing(final, "wb") as f:
                if use_torch:
                    sys.modules["torch"].save(obj, f)
                else:
                    pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:
            if name is None and not held:  # the empty name reserved above
                with contextlib.suppress(OSError):
                    final.unlink()
            _raise_save_error(exc, final)
            raise
        # the manifest changes after the rename (never claiming a file that is not there), under the lock
        replaced = None
        if name is None:
            numbered.append(final.name)
        else:
            replaced = named.get(name)
            named[name] = final.name
        pruned = []
        if keep is not None and name is None:
            live = [n for n in numbered if (folder / n).exists()]
            pruned, numbered = live[:-keep], live[-keep:]
        try:
            _write_manifest(folder, named, numbered)
        except OSError as exc:
            _raise_save_error(exc, folder / MANIFEST)
            raise
    if replaced is not None and replaced != final.name:
        with contextlib.suppress(OSError):
            (folder / replaced).unlink()
    for old in pruned:
        with contextlib.suppress(OSError):
            (folder / old).unlink()
            log.debug("removed old checkpoint %s", old)
    return final


@contextlib.contextmanager
def _locked_or_error(folder: Path) -> Iterator[bool]:
    try:
        lock = _locked(folder)
        held = lock.__enter__()
    except OSError as exc:
        raise _write_error(exc, folder, f"Cannot write checkpoints to {folder}", folder) from exc
    try:
        yield held
    finally:
        lock.__exit__(None, None, None)


def _write_error(exc: OSError, folder: Path, head: str, path: Path) -> CheckpointError:
    """The CheckpointError for a write in ``folder`` that failed with ``exc``, with the fix for its cause and
    for the disk it is on (a full local disk is not a Drive problem)."""
    from . import _disk

    if exc.errno in (errno.ENOTDIR, errno.EEXIST):  # a file stands where a folder of the path should be
        above = next((p for p in (folder, *folder.parents) if p.is_file()), folder)
        return CheckpointError(
            f"{head}: {above} is a file, not a folder",
            f"Save into a folder: pass a path that does not run through the file {above}.",
            path=path,
        )
    found = _disk.problem(exc, folder)
    where = _mounts.mountpoint_of(folder) or folder
    fixes = {
        "full": f"Free space on that disk (save(..., keep=3) keeps only the newest three; `df -h {where}` shows "
        "what is left), or save to a folder on another disk, then save again.",
        "dead": "Remount Drive with colabkit.mount(force=True), then save again.",
        "gone": f"A folder above {path} was deleted while saving: save again (it is created anew).",
        "readonly": f"{where} is mounted read-only: save to a writable folder, or mount Drive again without "
        "readonly=True (colabkit.mount(force=True)).",
    }
    hint = fixes.get(found.kind, f"Check that {folder} can be written (its permissions, its disk), then save again.")
    return CheckpointError(f"{head}: {found.what}", hint, path=path)


def _raise_save_error(exc: BaseException, final: Path) -> None:
    """Raise the CheckpointError for a failed write (returns for errors that are not about the save)."""
    if isinstance(exc, CheckpointError):
        return
    if isinstance(exc, OSError):
        raise _write_error(exc, final.parent, f"Could not write checkpoint {final}", final) from exc
    if isinstance(exc, (pickle.PicklingError, TypeError, AttributeError)):
        raise CheckpointError(
            f"Could not save checkpoint {final}: {exc}",
            "Save plain data (numbers, dicts, lists, arrays, state_dict() of models), not open files, "
            "locks, lambdas or generators.",
            path=final,
        ) from exc


def latest(dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint :func:`save` wrote in ``dir``, or ``None`` when there is none (or no folder).

    Temp files of a save still running, or of one that was killed, are never returned, nor files
    ``save()`` did not write (``pretrained.pt``, ``vocab.pkl``).

    Examples:
        >>> colabkit.latest("checkpoints")
        PosixPath('checkpoints/ckpt-000004.pt')
    """
    numbered, named = _ours(Path(dir))
    found = sorted(numbered + named, key=lambda p: (_mtime_ns(p), p.name))
    return found[-1] if found else None


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def load(path: str | os.PathLike[str], **torch_kwargs: Any) -> Any:
    """Read a checkpoint written by :func:`save`; a folder means its :func:`latest` checkpoint.

    Args:
        path: a checkpoint file, or a checkpoint folder.
        **torch_kwargs: passed to ``torch.load`` for ``.pt`` files (e.g. ``map_location="cpu"``);
            ``weights_only`` defaults to ``False`` since colabkit wrote the file itself.

    Returns:
        The saved object.

    Raises:
        CheckpointError: no checkpoint there, or it cannot be read (truncated, written by another tool).

    Examples:
        >>> state = colabkit.load(os.environ["COLABKIT_RESUME"])
        >>> state["step"]
        1200
    """
    target = Path(path)
    if target.is_dir():
        found = latest(target)
        if found is None:
            raise CheckpointError(
                f"No checkpoint in {target}",
                "Save one first with colabkit.save(obj, folder), or start without resuming.",
                path=target,
            )
        target = found
    try:
        if target.suffix == ".pt":
            try:
                import torch
            except ImportError:
                raise CheckpointError(
                    f"{target} was written by torch.save, but torch is not installed",
                    "Install PyTorch (pip install torch) to load it.",
                    path=target,
                ) from None
            torch_kwargs.setdefault("weights_only", False)
            return torch.load(target, **torch_kwargs)
        with open(target, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"Checkpoint {target} does not exist",
            "Pass the path colabkit.save() returned, or colabkit.latest(folder).",
            path=target,
        ) from exc
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"Could not read checkpoint {target}: {exc}",
            "Load an older one from the same folder, or delete this file if it was not written by colabkit.save().",
            path=target,
        ) from exc
