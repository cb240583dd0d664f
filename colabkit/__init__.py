"""colabkit: verify the GPU, mount Google Drive, open the project and train with a live GPU monitor.

    >>> import colabkit
    >>> colabkit.setup("test")                     # GPU ok, Drive mounted, cwd = MyDrive/test
    >>> colabkit.run("test.py", "--epochs", "3")   # live output + GPU memory, log kept on Drive

This module is the whole public surface; the code lives in private modules (``colabkit/_*.py``) and
``colabkit.errors``. Everything loads on first use: ``import colabkit`` imports neither NVML, psutil,
tqdm, IPython nor torch, nor the standard library's ``typing``.
"""

from __future__ import annotations

import sys

from ._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers read it the same)

# public name -> the private module it is read from (PEP 562 lazy loading)
_NAMES: dict[str, str] = {
    # calls
    "setup": "_session",
    "release": "_release",
    "gpus": "_gpu",
    "require_gpu": "_gpu",
    "gpu_processes": "_gpu",
    "verify_torch": "_gpu",
    "detect_runtime": "_runtime",
    "mount": "_drive",
    "find_mount": "_drive",
    "flush": "_drive",
    "project": "_project",
    "current_project": "_project",
    "run": "_run",
    "monitor": "_monitor",
    "info": "_report",
    "doctor": "_report",
    "stage": "_stage",
    "save": "_checkpoint",
    "latest": "_checkpoint",
    "load": "_checkpoint",
    "runs": "_history",
    "attach": "_attach",
    # types
    "Session": "_session",
    "GpuInfo": "_gpu",
    "GpuProcess": "_gpu",
    "TorchStatus": "_torch",
    "Runtime": "_runtime",
    "Mount": "_mounts",
    "Project": "_project",
    "RunResult": "_result",
    "Monitor": "_monitor",
    "Sample": "_stats",
    "Stats": "_stats",
    "DeviceStats": "_stats",
    "Info": "_report",
    "Doctor": "_report",
    "Check": "_report",
    "RunList": "_history",
    "RunInfo": "_history",
    # errors
    "ColabkitError": "errors",
    "ColabkitWarning": "errors",
    "GpuError": "errors",
    "NoGpuError": "errors",
    "NotEnoughGpus": "errors",
    "CudaMismatchError": "errors",
    "MountError": "errors",
    "ProjectNotFound": "errors",
    "InstallError": "errors",
    "StageError": "errors",
    "CheckpointError": "errors",
    "ScriptNotFound": "errors",
    "SecretNotFound": "errors",
    "RunFailed": "errors",
    "CudaOutOfMemory": "errors",
    "ReleaseError": "errors",
}

# the module names of colabkit 0.1 (``colabkit.checkpoint.load``, ``colabkit.drive.find_mount``...):
# still importable, each name on them deprecated in favour of its top-level spelling (see _compat)
_OLD_MODULES = frozenset(
    {
        "checkpoint", "colab", "demo", "display", "drive", "gpu", "history", "monitoring", "ocamlfuse",
        "oom", "projects", "report", "runner", "runtime", "session", "staging",
    }
)  # fmt: skip

__all__ = ["__version__", *_NAMES]


def __getattr__(name: str) -> object:
    from importlib import import_module

    if name in _OLD_MODULES:
        return import_module(f"{__name__}.{name}")
    module_name = _NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'colabkit' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module_name}"), name)
    value.__module__ = __name__  # reads colabkit.Mount in reprs, tracebacks and help()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _OldModuleFinder:
    """Lets ``import colabkit.checkpoint`` (a 0.1 module name) find its deprecated alias module."""

    @staticmethod
    def find_spec(fullname: str, path: object = None, target: object = None) -> object:
        package, _, old = fullname.partition(".")
        if package != __name__ or old not in _OLD_MODULES:
            return None
        from ._compat import LOADER

        return type(__spec__)(fullname, LOADER)


if not any(isinstance(f, type) and f.__name__ == "_OldModuleFinder" for f in sys.meta_path):
    sys.meta_path.append(_OldModuleFinder)


if TYPE_CHECKING:  # pragma: no cover - for IDEs and type checkers only
    from ._attach import attach
    from ._checkpoint import latest, load, save
    from ._drive import find_mount, flush, mount
    from ._gpu import GpuInfo, GpuProcess, gpu_processes, gpus, require_gpu, verify_torch
    from ._history import RunInfo, RunList, runs
    from ._monitor import Monitor, monitor
    from ._mounts import Mount
    from ._project import Project, current_project, project
    from ._release import release
    from ._report import Check, Doctor, Info, doctor, info
    from ._result import RunResult
    from ._run import run
    from ._runtime import Runtime, detect_runtime
    from ._session import Session, setup
    from ._stage import stage
    from ._stats import DeviceStats, Sample, Stats
    from ._torch import TorchStatus
    from .errors import (
        CheckpointError,
        ColabkitError,
        ColabkitWarning,
        CudaMismatchError,
        CudaOutOfMemory,
        GpuError,
        InstallError,
        MountError,
        NoGpuError,
        NotEnoughGpus,
        ProjectNotFound,
        ReleaseError,
        RunFailed,
        ScriptNotFound,
        SecretNotFound,
        StageError,
    )
