"""Checkpoints that survive a disconnect: atomic save, keep the newest few, find the latest complete one."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any

from . import _files
from .errors import CheckpointError

__all__ = ["latest", "load", "save"]

log = logging.getLogger(__name__)

_SUFFIXES = (".pt", ".pkl")  # .pt: written by torch.save; .pkl: pickle
_SEQ = re.compile(r"^ckpt-(\d{6,})\.(?:pt|pkl)$")  # the numbered checkpoints save() writes
MANIFEST = ".colabkit-checkpoints.json"  # in the folder: the named checkpoints save() wrote


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


def _named(folder: Path) -> dict[str, str]:
    """The manifest: stem of each named checkpoint save() wrote → its file name. Unreadable means none."""
    data = _files.read_json(folder / MANIFEST)
    named = data.get("named") if data is not None else None
    if not isinstance(named, dict):
        return {}
    return {k: v for k, v in named.items() if isinstance(k, str) and isinstance(v, str) and v == f"{k}{Path(v).suffix}"}


def _record_named(folder: Path, stem: str, file_name: str) -> None:
    """Add ``stem`` → ``file_name`` to the manifest (temp file, fsync, rename: never half-written)."""
    named = _named(folder)
    named[stem] = file_name
    _files.write_json(folder / MANIFEST, {"schema": 1, "named": dict(sorted(named.items()))}, indent=1)


def _ours(folder: Path) -> tuple[list[Path], list[Path]]:
    """Checkpoints save() wrote in ``folder``: (numbered, named), each oldest first.

    Numbered ones are ``ckpt-NNNNNN.pt``/``.pkl``; named ones are those in the manifest. Any other
    file (pretrained weights, a vocabulary pickle) is the user's and never listed.
    """
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return [], []
    named = set(_named(folder).values())
    numbered: list[tuple[int, str]] = []
    by_name: list[tuple[int, str]] = []
    for entry in entries:
        is_seq = _SEQ.match(entry.name) is not None
        if not (is_seq or entry.name in named) or not entry.name.endswith(_SUFFIXES):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                (numbered if is_seq else by_name).append((entry.stat().st_mtime_ns, entry.name))
        except OSError:  # vanished while listing
            continue
    numbered.sort()
    by_name.sort()
    return [folder / n for _, n in numbered], [folder / n for _, n in by_name]


def _next_name(folder: Path) -> str:
    numbered, _ = _ours(folder)
    seqs = [int(m.group(1)) for p in numbered if (m := _SEQ.match(p.name))]
    return f"ckpt-{max(seqs, default=0) + 1:06d}"


def save(obj: Any, dir: str | os.PathLike[str], *, keep: int | None = 3, name: str | None = None) -> Path:
    """Write a checkpoint atomically and keep only the newest ``keep`` numbered ones.

    The object goes to a hidden temp file in ``dir``, is flushed and fsynced, then renamed into place
    with ``os.replace`` (and the folder fsynced, see ``_files``), so a process killed mid-save never leaves a file
    that :func:`latest` would return. Objects holding tensors are written with ``torch.save`` (when torch
    is already imported) as ``.pt``; anything else is pickled as ``.pkl``.

    Only files ``save()`` wrote count as checkpoints: the numbered ``ckpt-NNNNNN.pt``/``.pkl`` and the
    named ones listed in ``.colabkit-checkpoints.json`` in the folder. Other files there (pretrained
    weights, a vocabulary pickle) are never pruned and never returned by :func:`latest`.

    Args:
        obj: what to save, e.g. ``{"step": 1200, "model": model.state_dict(), "opt": opt.state_dict()}``.
        dir: checkpoint folder, created if missing (put it on Drive to survive the VM).
        keep: how many numbered checkpoints to keep, newest first; ``None`` keeps all. Named
            checkpoints are never pruned: saving the same name again replaces the file.
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
        >>> colabkit.save({"model": model.state_dict()}, "checkpoints", name="best")
        PosixPath('checkpoints/best.pt')
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None to keep all), got {keep!r}")
    if name is not None and (not name or "/" in name or os.sep in name or name.startswith(".")):
        raise ValueError(f"name must be a plain file stem such as 'best', got {name!r}")
    folder = Path(dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _files.remove_abandoned(folder)
    except OSError as exc:
        raise CheckpointError(
            f"Cannot write checkpoints to {folder}: {exc.strerror or exc}",
            "Check that the folder is on a mounted, writable Drive (colabkit.mount()) and has free space.",
            path=folder,
        ) from exc
    use_torch = _holds_tensors(obj)
    stem = name or _next_name(folder)
    final = folder / f"{stem}{'.pt' if use_torch else '.pkl'}"
    replaced = None  # a named checkpoint saved before with the other suffix
    try:
        with _files.replacing(final, "wb") as f:
            if use_torch:
                sys.modules["torch"].save(obj, f)
            else:
                pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
        if _SEQ.match(final.name) is None:
            replaced = _named(folder).get(stem)
            _record_named(folder, stem, final.name)  # after the rename: never claim a file that is not ours
    except BaseException as exc:
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
    if replaced is not None and replaced != final.name:
        with contextlib.suppress(OSError):
            (folder / replaced).unlink()
    if keep is not None:
        numbered, _ = _ours(folder)
        for old in numbered[:-keep]:
            if old != final:
                with contextlib.suppress(OSError):
                    old.unlink()
                    log.debug("removed old checkpoint %s", old)
    return final


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
