"""colabkit 0.1's module names (``colabkit.checkpoint``, ``colabkit.drive``, ...) as deprecated aliases.

0.1 kept each call in a module of its own, which left a second tier of names with no rule
(``colabkit.checkpoint.load`` beside ``colabkit.save``). Code written against it keeps working: the
old module names import, and each attribute read from them warns with ``DeprecationWarning``
and names the top-level spelling.
"""

from __future__ import annotations

import importlib
import types
import warnings
from typing import Any

__all__ = ["LOADER", "OLD_MODULES"]

# 0.1 module -> the private module that holds its code now
OLD_MODULES: dict[str, str] = {
    "checkpoint": "_checkpoint",
    "colab": "_colab",
    "demo": "_demo",
    "display": "_display",
    "drive": "_drive",
    "gpu": "_gpu",
    "history": "_history",
    "monitoring": "_monitor",
    "ocamlfuse": "_ocamlfuse",
    "oom": "_oom",
    "projects": "_project",
    "report": "_report",
    "runner": "_run",
    "runtime": "_runtime",
    "session": "_session",
    "staging": "_stage",
}

# (0.1 module, name) -> its top-level name now, where the name changed
RENAMED: dict[tuple[str, str], str] = {
    ("projects", "current"): "current_project",
    ("runtime", "detect"): "detect_runtime",
}


class _Alias(types.ModuleType):
    """A 0.1 module name: reads go to colabkit's public names (or, for internals, the private module)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        import colabkit

        old = self.__name__.rpartition(".")[2]
        public = RENAMED.get((old, name), name)
        if public in colabkit.__all__:
            warnings.warn(
                f"colabkit.{old}.{name} is deprecated: use colabkit.{public}",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(colabkit, public)
        target = f"colabkit.{OLD_MODULES[old]}"
        warnings.warn(
            f"colabkit.{old} is gone: {name} is internal now ({target}) and may change without notice",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(target), name)


class _Loader:
    """Makes an :class:`_Alias` for a 0.1 module name found by ``colabkit._OldModuleFinder``."""

    def __repr__(self) -> str:
        return "deprecated alias"

    @staticmethod
    def create_module(spec: Any) -> types.ModuleType:
        module = _Alias(spec.name)
        module.__doc__ = f"Deprecated: colabkit 0.1's {spec.name}; use the top-level names of colabkit."
        return module

    @staticmethod
    def exec_module(module: types.ModuleType) -> None:
        pass


LOADER = _Loader()
