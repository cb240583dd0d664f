"""PyTorch asked in a short child process (never in this one: no CUDA context here) whether it can use the GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from html import escape

from ._format import na
from .errors import RESTART, CudaMismatchError, GpuError

__all__ = ["TorchStatus", "torch_status", "verify"]

_TORCH_PROBE = """
import json, sys
try:
    import torch
except Exception as exc:
    print(json.dumps({"error": f"import torch failed: {type(exc).__name__}: {exc}"}))
    sys.exit(0)
out = {"version": str(torch.__version__), "cuda": torch.version.cuda}
try:
    out["available"] = bool(torch.cuda.is_available())
    out["device_count"] = int(torch.cuda.device_count()) if out["available"] else 0
except Exception as exc:
    out["error"] = f"torch.cuda failed: {type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@dataclass(frozen=True)
class TorchStatus:
    """What PyTorch reported in a child process: version, CUDA build (``None`` = CPU build), GPU seen."""

    version: str | None
    cuda: str | None
    available: bool | None
    device_count: int | None = None
    error: str | None = None  # the probe's own failure (timeout, import error)

    def describe(self) -> str:
        if self.error and self.version is None:
            return f"torch: {self.error}"
        build = f"CUDA {self.cuda}" if self.cuda else "CPU-only build"
        seen = {True: "sees the GPU", False: "sees no GPU", None: "GPU n/a"}[self.available]
        text = f"torch {na(self.version)} ({build}), {seen}"
        return f"{text}; {self.error}" if self.error else text

    def __repr__(self) -> str:
        return f"TorchStatus({self.describe()})"

    def _repr_html_(self) -> str:
        return f"<code>{escape(self.describe())}</code>"


def torch_status(timeout: float = 60.0) -> TorchStatus | None:
    """Ask PyTorch in a short child process (never here: no CUDA context in the caller) what it sees.

    Returns:
        ``None`` when torch is not installed; else a ``TorchStatus`` (with ``error`` set if the child
        timed out or failed). Never raises.
    """
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _TORCH_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return TorchStatus(None, None, None, error=f"the torch check timed out after {timeout:g} s")
    except OSError as exc:
        return TorchStatus(None, None, None, error=f"the torch check could not start: {exc}")
    lines = proc.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return TorchStatus(None, None, None, error=f"the torch check failed (exit {proc.returncode}): {tail}")
    return TorchStatus(
        version=data.get("version"),
        cuda=data.get("cuda"),
        available=data.get("available"),
        device_count=data.get("device_count"),
        error=data.get("error"),
    )


def _version_tuple(text: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in (text or "").split(".")[:2])
    except ValueError:
        return None


def verify(
    name: str, driver_version: str | None, driver_cuda: str | None, *, timeout: float = 60.0
) -> TorchStatus | None:
    """Check that PyTorch, if installed, can use the GPU ``name`` whose driver supports CUDA ``driver_cuda``.

    Returns:
        The ``TorchStatus``, or ``None`` when torch is not installed.

    Raises:
        CudaMismatchError: torch is a CPU-only build, or built for a CUDA newer than the driver supports.
        GpuError: torch has a fitting CUDA build but still sees no GPU.
    """
    status = torch_status(timeout)
    if status is None or status.version is None:
        return status
    build = (
        f"the PyTorch build for CUDA {driver_cuda} (or older)" if driver_cuda else "a PyTorch build with CUDA"
    )
    fix = f"Install {build} from pytorch.org's install selector (its `pip install torch --index-url ...` line), then {RESTART}."
    facts = {"torch_version": status.version, "torch_cuda": status.cuda, "driver_cuda": driver_cuda}
    if status.cuda is None:
        raise CudaMismatchError(
            f"PyTorch {status.version} is a CPU-only build: it cannot use the {name}.", fix, **facts
        )
    built, driver = _version_tuple(status.cuda), _version_tuple(driver_cuda)
    newer = built is not None and driver is not None and built > driver
    # CUDA minor-version compatibility lets a 12.6 build run on a 12.4 driver; a newer major never runs
    if newer and (built[0] > driver[0] or not status.available):
        raise CudaMismatchError(
            f"PyTorch {status.version} is built for CUDA {status.cuda}, newer than the CUDA {driver_cuda} "
            f"the NVIDIA driver {na(driver_version)} supports.",
            fix + " Or upgrade the NVIDIA driver.",
            **facts,
        )
    if status.available is False:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        cvd = (
            f" CUDA_VISIBLE_DEVICES is {visible!r}: unset it or list the GPU." if visible is not None else ""
        )
        raise GpuError(
            f"PyTorch {status.version} (CUDA {status.cuda}) sees no GPU although NVML sees the {name}"
            + (f": {status.error}" if status.error else "."),
            f"{RESTART.capitalize()}.{cvd}",
        )
    return status
