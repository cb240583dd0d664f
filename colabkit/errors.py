"""Every colabkit exception and warning, each carrying the fix as ``hint``.

Class tree::

    ColabkitError(Exception)                 message + hint
    ├── GpuError                             NVML or the framework failed on a GPU that exists
    │   ├── NoGpuError(GpuError, RuntimeError)      no usable NVIDIA GPU
    │   └── CudaMismatchError(GpuError)             torch's CUDA build does not suit the driver
    ├── MountError(ColabkitError, OSError)   Drive could not be mounted, flushed or used
    ├── ProjectNotFound(ColabkitError, FileNotFoundError)
    ├── InstallError(ColabkitError)          pip failed on the project's requirements
    ├── StageError(ColabkitError, OSError)   data could not be staged to local disk
    ├── CheckpointError(ColabkitError, OSError)  a checkpoint could not be written or read
    ├── ScriptNotFound(ColabkitError, FileNotFoundError)  run() was given a script that does not exist
    ├── RunFailed(ColabkitError)             the training child exited non-zero
    │   └── CudaOutOfMemory(RunFailed)       ... and it ran out of GPU memory
    └── ReleaseError(ColabkitError)          the runtime could not be given back

    ColabkitWarning(UserWarning)             colabkit can go on, but you should know
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CheckpointError",
    "ColabkitError",
    "ColabkitWarning",
    "CudaMismatchError",
    "CudaOutOfMemory",
    "GpuError",
    "InstallError",
    "MountError",
    "NoGpuError",
    "ProjectNotFound",
    "ReleaseError",
    "RunFailed",
    "ScriptNotFound",
    "StageError",
]


class ColabkitError(Exception):
    """Base class: ``message`` says what went wrong, ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\nHINT: {hint}")


class ColabkitWarning(UserWarning):
    """colabkit can go on, but something is not as it should be."""


class GpuError(ColabkitError):
    """NVML or the framework failed on a GPU."""


class NoGpuError(GpuError, RuntimeError):
    """No usable NVIDIA GPU; ``hint`` gives the fix for the current runtime, ``reason`` the short cause."""

    def __init__(
        self, message: str, hint: str | None = None, *, runtime: str | None = None, reason: str | None = None
    ) -> None:
        self.runtime = runtime
        self.reason = reason
        super().__init__(message, hint)


class CudaMismatchError(GpuError):
    """PyTorch cannot use the GPU although NVML sees it (CPU build, or CUDA build newer than the driver)."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        torch_version: str | None = None,
        torch_cuda: str | None = None,
        driver_cuda: str | None = None,
    ) -> None:
        self.torch_version = torch_version
        self.torch_cuda = torch_cuda
        self.driver_cuda = driver_cuda
        super().__init__(message, hint)


class MountError(ColabkitError, OSError):
    """Drive could not be mounted, flushed or used at ``mountpoint``; ``reason`` names the failure."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        mountpoint: str | Path | None = None,
        method: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.mountpoint = str(mountpoint) if mountpoint is not None else None
        self.method = method
        self.reason = reason  # short code, e.g. "timeout", "credentials", "not_empty", "not_colab", "dead"
        ColabkitError.__init__(self, message, hint)

    def __str__(self) -> str:  # OSError would otherwise print its args tuple
        return ColabkitError.__str__(self)


class ProjectNotFound(ColabkitError, FileNotFoundError):
    """The project folder does not exist; ``candidates`` holds the closest folder names."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        path: str | Path | None = None,
        candidates: tuple[str, ...] = (),
    ) -> None:
        self.path = str(path) if path is not None else None
        self.candidates = tuple(candidates)
        ColabkitError.__init__(self, message, hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class InstallError(ColabkitError):
    """``pip install -r requirements.txt`` failed; ``output_tail`` holds pip's last lines."""

    def __init__(self, message: str, hint: str | None = None, *, returncode: int | None = None, output_tail: str = "") -> None:
        self.returncode = returncode
        self.output_tail = output_tail
        super().__init__(message, hint)


class StageError(ColabkitError, OSError):
    """Data could not be staged from Drive to local disk."""

    def __init__(self, message: str, hint: str | None = None, *, needed_bytes: int | None = None, free_bytes: int | None = None) -> None:
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        ColabkitError.__init__(self, message, hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class CheckpointError(ColabkitError, OSError):
    """A checkpoint at ``path`` could not be written or read."""

    def __init__(self, message: str, hint: str | None = None, *, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        ColabkitError.__init__(self, message, hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class ScriptNotFound(ColabkitError, FileNotFoundError):
    """The script given to ``run()`` does not exist at ``path``."""

    def __init__(self, message: str, hint: str | None = None, *, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        ColabkitError.__init__(self, message, hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class RunFailed(ColabkitError):
    """The training child exited with a non-zero status.

    ``stderr_tail`` holds the last lines of the child's output (stdout and stderr together, in the order
    they were written); ``log_path`` the full log.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        returncode: int | None = None,
        stderr_tail: str = "",
        log_path: str | Path | None = None,
        result: object | None = None,
    ) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.log_path = str(log_path) if log_path is not None else None
        self.result = result
        super().__init__(message, hint)


class CudaOutOfMemory(RunFailed):
    """The child ran out of GPU memory; ``peak_bytes`` is the most colabkit saw in use."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        peak_bytes: int | None = None,
        total_bytes: int | None = None,
        **kwargs: object,
    ) -> None:
        self.peak_bytes = peak_bytes
        self.total_bytes = total_bytes
        super().__init__(message, hint, **kwargs)  # type: ignore[arg-type]


class ReleaseError(ColabkitError):
    """The Colab runtime could not be given back (or was kept because the Drive flush failed)."""
