"""The GPU check: which NVIDIA GPUs there are, the one that fits, and who holds their memory.

NVML itself is behind ``_nvml`` (the only module that talks to it); PyTorch is asked in a child process
by ``_torch``, so the process that calls these never creates a CUDA context.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from . import _nvml, _procs, _runtime, _torch
from ._format import format_gib, na
from ._nvml import GpuInfo
from ._torch import TorchStatus
from .errors import NoGpuError

__all__ = ["GpuInfo", "GpuProcess", "gpu_processes", "gpus", "require_gpu", "verify_torch"]

GIB = 1024**3


@dataclass(frozen=True)
class GpuProcess:
    """A process holding GPU memory: host ``pid``, ``used_bytes`` (``None`` if NVML hides it), its command line."""

    gpu_index: int
    pid: int
    used_bytes: int | None
    command: str | None

    def __repr__(self) -> str:
        return f"GpuProcess(gpu={self.gpu_index}, pid={self.pid}, used={format_gib(self.used_bytes)}, command={na(self.command)!r})"

    def _repr_html_(self) -> str:
        return (
            f"<code>GPU {self.gpu_index}: pid {self.pid}, {escape(format_gib(self.used_bytes))}, "
            f"{escape(na(self.command))}</code>"
        )


def gpus() -> list[GpuInfo]:
    """List the NVIDIA GPUs NVML sees, with memory, driver and CUDA facts.

    Returns:
        One ``GpuInfo`` per device; ``[]`` when there is no driver or no GPU (never raises for that).

    Raises:
        GpuError: NVML is there but failed (old ``pynvml`` package shadowing nvidia-ml-py, driver
            and library versions differ after an upgrade, a GPU fell off the bus). ``hint`` says what to do.

    Examples:
        >>> colabkit.gpus()
        [GpuInfo(0: Tesla T4, 15.0 GiB (0.0 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5)]
    """
    return _nvml.devices()


def require_gpu(
    min_memory_gib: float | None = None, name: str | None = None, *, check_torch: bool = False
) -> GpuInfo:
    """Return the first GPU that fits, or raise with the fix for this runtime.

    Args:
        min_memory_gib: least total memory wanted, in GiB (a T4 has 15.0).
        name: part of the GPU name wanted, case-insensitive (``"A100"``, ``"T4"``).
        check_torch: also check, in a short child process, that PyTorch (if installed) can use the GPU.

    Returns:
        The ``GpuInfo`` of the first matching GPU.

    Raises:
        NoGpuError: no GPU (a CPU runtime, no driver) or none matches ``min_memory_gib``/``name``;
            the hint gives the exact menu path on Colab and Kaggle.
        GpuError: NVML failed on a GPU that exists.
        CudaMismatchError: with ``check_torch``, PyTorch is a CPU build or built for a newer CUDA than the driver.

    Examples:
        >>> colabkit.require_gpu(min_memory_gib=12)
        GpuInfo(0: Tesla T4, 15.0 GiB (0.0 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5)
    """
    found = _nvml.require_devices()
    fits = found
    if name is not None:
        fits = [g for g in fits if name.lower() in g.name.lower()]
        if not fits:
            names = ", ".join(g.name for g in found)
            raise NoGpuError(
                f"No GPU named {name!r} here: found {names}.",
                "Choose another GPU type in Runtime → Change runtime type (on Colab), or drop name= to take any GPU.",
                runtime=_runtime.detect_runtime().kind,
                reason=f"no GPU named {name!r}",
            )
    if min_memory_gib is not None:
        big = [g for g in fits if g.memory_total is not None and g.memory_total >= min_memory_gib * GIB]
        if not big:
            have = ", ".join(f"{g.name} ({format_gib(g.memory_total)})" for g in fits)
            raise NoGpuError(
                f"No GPU with at least {min_memory_gib:g} GiB of memory (min_memory_gib={min_memory_gib!r}): found {have}.",
                "Lower min_memory_gib (and the batch size), or choose a larger GPU in Runtime → Change runtime type "
                "on Colab (L4 and A100 need a paid plan).",
                runtime=_runtime.detect_runtime().kind,
                reason=f"no GPU with {min_memory_gib:g} GiB",
            )
        fits = big
    chosen = fits[0]
    if check_torch:
        verify_torch(chosen)
    return chosen


def gpu_processes() -> list[GpuProcess]:
    """Every process holding GPU memory, over all GPUs, with its command line (``None`` if not visible here).

    Examples:
        >>> colabkit.gpu_processes()
        [GpuProcess(gpu=0, pid=4242, used=3.2 GiB, command='python3 train.py')]
    """
    src = _nvml.source()
    out = []
    for index in range(src.device_count()):
        for pid, used in src.processes(index):
            cmd = _procs.cmdline(pid)
            out.append(
                GpuProcess(gpu_index=index, pid=pid, used_bytes=used, command=" ".join(cmd) if cmd else None)
            )
    return out


def verify_torch(gpu: GpuInfo | None = None, *, timeout: float = 60.0) -> TorchStatus | None:
    """Check that PyTorch, if installed, can use the GPU; the check runs in a child process.

    Args:
        gpu: the GPU to check against (default: the first one NVML sees).
        timeout: seconds the child may take to import torch.

    Returns:
        The ``TorchStatus``, or ``None`` when torch is not installed or there is no GPU.

    Raises:
        CudaMismatchError: torch is a CPU-only build, or built for a CUDA newer than the driver supports
            (the driver would need an upgrade); the hint names the build to install.
        GpuError: torch has a fitting CUDA build but still sees no GPU.

    Examples:
        >>> colabkit.verify_torch()
        TorchStatus(torch 2.5.1+cu124 (CUDA 12.4), sees the GPU)
    """
    if gpu is None:
        found = gpus()
        if not found:
            return None
        gpu = found[0]
    return _torch.verify(gpu.name, gpu.driver_version, gpu.cuda_driver_version, timeout=timeout)
