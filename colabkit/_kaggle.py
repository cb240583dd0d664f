"""Kaggle as a home: its folders (``/kaggle/input`` read-only, ``/kaggle/working`` kept), where a project and
its runs live there, and its secrets (``kaggle_secrets``, imported only here).

Kaggle mounts a notebook's datasets and competition data read-only under ``/kaggle/input/<slug>`` and gives
it one writable folder, ``/kaggle/working``, saved with a version of the notebook. A project is that
working folder, a folder in it, or a dataset under ``/kaggle/input``; a run of a read-only project
writes its run folder and checkpoints to ``/kaggle/working`` instead. Paths go through
``$COLABKIT_SYSROOT``, so a test fakes a Kaggle machine with two folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _runtime

__all__ = [
    "candidates",
    "is_input",
    "locate",
    "secret_lookup",
    "writable_home",
]

_CANDIDATES_MAX = 5


def is_input(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies in ``/kaggle/input`` (read-only: datasets and competition data)."""
    root = _runtime.kaggle_input()
    full = Path(os.path.abspath(path))
    return full == root or root in full.parents


def writable_home(path: str | os.PathLike[str]) -> Path:
    """Where files of a project at ``path`` are written: ``path`` itself, or ``/kaggle/working`` for a dataset."""
    return _runtime.kaggle_working() if is_input(path) else Path(os.path.abspath(path))


def _datasets() -> list[Path]:
    try:
        return sorted(p for p in _runtime.kaggle_input().iterdir() if p.is_dir())
    except OSError:
        return []


def locate(name: str | os.PathLike[str]) -> Path | None:
    """The folder a project name means on Kaggle, or ``None``.

    ``""`` or ``"."`` is the working folder; ``"name"`` is ``/kaggle/working/name``, else the dataset
    ``/kaggle/input/name``, else a folder ``name`` at the top of one dataset (``/kaggle/input/<slug>/name``);
    an absolute path is taken as it is.

    Examples:
        >>> locate("cifar-demo")
        PosixPath('/kaggle/input/cifar-demo')
    """
    path = Path(os.fspath(name)).expanduser()
    if path.is_absolute():
        return path if path.is_dir() else None
    working = _runtime.kaggle_working()
    if str(path) in ("", "."):
        return working if working.is_dir() else None
    for candidate in (working / path, _runtime.kaggle_input() / path):
        if candidate.is_dir():
            return candidate
    if len(path.parts) == 1:
        for dataset in _datasets():
            if (dataset / path).is_dir():
                return dataset / path
    return None


def candidates(name: str) -> tuple[str, ...]:
    """Close folder names in ``/kaggle/working`` and ``/kaggle/input``, as a user would pass them."""
    import difflib

    names: list[str] = []
    for root in (_runtime.kaggle_working(), _runtime.kaggle_input()):
        try:
            names += [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            continue
    close = difflib.get_close_matches(name, sorted(set(names)), n=_CANDIDATES_MAX, cutoff=0.5)
    return tuple(close)


def secret_lookup(label: str) -> tuple[str, str | None, str]:
    """Ask Kaggle's secrets (Add-ons → Secrets) for ``label``: ``(status, value, detail)``.

    ``status`` is ``"ok"`` (``value`` holds it), ``"missing"`` (not attached to this notebook),
    ``"unavailable"`` (no ``kaggle_secrets`` here, or the notebook has no secrets token), ``"offline"``
    (the service could not be reached: Internet is off) or ``"error"``. ``detail`` says why in a few
    words and never holds a value. Never raises for what the service answers.
    """
    try:  # the module Kaggle's image ships (Kaggle/docker-python patches/kaggle_secrets.py)
        from kaggle_secrets import UserSecretsClient
    except ImportError:
        return "unavailable", None, "kaggle_secrets is not installed here"
    try:
        client = UserSecretsClient()
    except Exception as exc:  # CredentialError: no KAGGLE_USER_SECRETS_TOKEN in the environment
        return "unavailable", None, f"Kaggle secrets are not enabled for this notebook ({type(exc).__name__})"
    try:
        value = client.get_secret(label)
    except ConnectionError:
        return "offline", None, "the Kaggle secrets service could not be reached (is Internet on?)"
    except Exception as exc:
        name = type(exc).__name__
        if name == "BackendError" and "Unauthenticated" in str(exc):  # an expired or foreign token
            return "unavailable", None, "the Kaggle secrets service refused this notebook's token (Unauthenticated)"
        if name == "BackendError":  # "No user secrets exist for kernel id ... and label ...": not attached here
            return "missing", None, "not attached to this notebook"
        if name == "CredentialError":
            return "unavailable", None, "the Kaggle secrets service refused this notebook's token"
        return "error", None, f"{name} from kaggle_secrets"
    if not isinstance(value, str):
        return "error", None, "kaggle_secrets answered something that is not text"
    return "ok", value, "Kaggle secrets"
