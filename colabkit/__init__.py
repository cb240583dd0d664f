"""colabkit: verify the GPU, mount Google Drive, open the project and train with a live GPU monitor.

    >>> import colabkit
    >>> colabkit.setup("test")                     # GPU ok, Drive mounted, cwd = MyDrive/test
    >>> colabkit.run("test.py", "--epochs", "3")   # live output + GPU memory, log kept on Drive

Everything loads on first use: ``import colabkit`` imports neither NVML, psutil, tqdm, IPython nor torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

# public name -> module that defines it (PEP 562 lazy loading). Module names never equal a public
# function name: once ``colabkit.project`` the module is imported, Python binds the module over it.
_NAMES: dict[str, str] = {
    # calls
    "setup": "session",
    "release": "session",
    "gpus": "gpu",
    "require_gpu": "gpu",
    "mount": "drive",
    "flush": "drive",
    "project": "projects",
    "run": "runner",
    "monitor": "monitoring",
    "info": "report",
    "doctor": "report",
    "stage": "staging",
    "save": "checkpoint",
    "latest": "checkpoint",
    "runs": "history",
    # types
    "Session": "session",
    "GpuInfo": "gpu",
    "Mount": "drive",
    "Project": "projects",
    "RunResult": "runner",
    "Monitor": "monitoring",
    "Sample": "monitoring",
    "Stats": "monitoring",
    "Info": "report",
    "Doctor": "report",
    "Check": "report",
    "Runtime": "runtime",
    "RunList": "history",
    "RunInfo": "history",
    "GpuProcess": "gpu",
    # errors
    "ColabkitError": "errors",
    "ColabkitWarning": "errors",
    "GpuError": "errors",
    "NoGpuError": "errors",
    "CudaMismatchError": "errors",
    "MountError": "errors",
    "ProjectNotFound": "errors",
    "InstallError": "errors",
    "StageError": "errors",
    "CheckpointError": "errors",
    "ScriptNotFound": "errors",
    "RunFailed": "errors",
    "CudaOutOfMemory": "errors",
    "ReleaseError": "errors",
}

__all__ = ["__version__", *_NAMES]


def __getattr__(name: str) -> Any:
    module_name = _NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'colabkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    if isinstance(value, type):
        value.__module__ = __name__  # reads colabkit.Mount in reprs and tracebacks
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for IDEs and type checkers only
    from .checkpoint import latest, save
    from .drive import Mount, flush, mount
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
        ProjectNotFound,
        ReleaseError,
        RunFailed,
        ScriptNotFound,
        StageError,
    )
    from .gpu import GpuInfo, GpuProcess, gpus, require_gpu
    from .history import RunInfo, RunList, runs
    from .monitoring import Monitor, Sample, Stats, monitor
    from .projects import Project, project
    from .report import Check, Doctor, Info, doctor, info
    from .runner import RunResult, run
    from .runtime import Runtime
    from .session import Session, release, setup
    from .staging import stage
