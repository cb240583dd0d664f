"""Checkpoints that survive a disconnect: atomic save, keep the newest few, find the latest complete one."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from . import _procs
from .errors import CheckpointError

__all__ = ["latest", "load", "save"]

log = logging.getLogger(__name__)

_SUFFIXES = (".pt", ".pkl")  # .pt: written by torch.save; .pkl: pickle
_SEQ = re.compile(r"^ckpt-(\d+)$")
_TEMP = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]+$")


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


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some FUSE file systems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(folder: Path) -> None:
    """Delete temp files left by saves that were killed (their writer is gone)."""
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if m and int(m.group("pid")) != os.getpid() and not _procs.alive(int(m.group("pid"))):
            with contextlib.suppress(OSError):
                entry.unlink()


def _complete(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first, by modification time then name."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(_SUFFIXES):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                found.append((entry.stat().st_mtime_ns, entry.name))
        except OSError:  # vanished while listing
            continue
    found.sort()
    return [folder / name for _, name in found]


def _next_name(folder: Path) -> str:
    seqs = [int(m.group(1)) for p in _complete(folder) if (m := _SEQ.match(p.stem))]
    return f"ckpt-{max(seqs, default=0) + 1:06d}"


def save(obj: Any, dir: str | os.PathLike[str], *, keep: int | None = 3, name: str | None = None) -> Path:
    """Write a checkpoint atomically and keep only the newest ``keep``.

    The object goes to a hidden temp file in ``dir``, is flushed and fsynced, then renamed into place
    with ``os.replace`` (and the folder fsynced), so a process killed mid-save never leaves a file
    that :func:`latest` would return. Objects holding tensors are written with ``torch.save`` (when torch
    is already imported) as ``.pt``; anything else is pickled as ``.pkl``.

    Args:
        obj: what to save, e.g. ``{"step": 1200, "model": model.state_dict(), "opt": opt.state_dict()}``.
        dir: checkpoint folder, created if missing (put it on Drive to survive the VM).
        keep: how many checkpoints to keep, newest first; ``None`` keeps all.
        name: file stem (``"best"`` → ``best.pt``); default ``ckpt-000001``, ``ckpt-000002``, ...

    Returns:
        The path of the checkpoint written.

    Raises:
        ValueError: ``keep`` is below 1 or ``name`` holds a path separator.
        CheckpointError: the folder cannot be written (Drive unmounted, read-only, full) or ``obj``
            cannot be pickled.

    Examples:
        >>> colabkit.save({"step": 1200, "model": model.state_dict()}, "checkpoints")
        PosixPath('checkpoints/ckpt-000004.pt')
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None to keep all), got {keep!r}")
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise ValueError(f"name must be a plain file stem such as 'best', got {name!r}")
    folder = Path(dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(folder)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot write checkpoints to {folder}: {exc.strerror or exc}",
            "Check that the folder is on a mounted, writable Drive (colabkit.mount()) and has free space.",
            path=folder,
        ) from exc
    use_torch = _holds_tensors(obj)
    final = folder / f"{name or _next_name(folder)}{'.pt' if use_torch else '.pkl'}"
    temp = folder / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(temp, "wb") as f:
            if use_torch:
                sys.modules["torch"].save(obj, f)
            else:
                pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"Could not write checkpoint {final}: {exc.strerror or exc}",
                "Check that Drive is still mounted and has free space, then save again.",
                path=final,
            ) from exc
        if isinstance(exc, (pickle.PicklingError, TypeError, AttributeError)):
            raise CheckpointError(
                f"Could not save checkpoint {final}: {exc}",
                "Save plain data (numbers, dicts, lists, arrays, state_dict() of models), not open files, "
                "locks, lambdas or generators.",
                path=final,
            ) from exc
        raise
    _fsync_dir(folder)
    if keep is not None:
        for old in _complete(folder)[:-keep]:
            if old != final:
                with contextlib.suppress(OSError):
                    old.unlink()
                    log.debug("removed old checkpoint %s", old)
    return final


def latest(dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint in ``dir``, or ``None`` when there is none (or no folder).

    Temp files of a save still running, or of one that was killed, are never returned.

    Examples:
        >>> colabkit.latest("checkpoints")
        PosixPath('checkpoints/ckpt-000004.pt')
    """
    found = _complete(Path(dir))
    return found[-1] if found else None


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
        >>> state = colabkit.checkpoint.load(os.environ["COLABKIT_RESUME"])
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
