"""PyTorch asked in a short child process (never in this one: no CUDA context here) whether it can use the GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from html import escape

from ._format import na
from .errors import RESTART, CudaMismatchError, GpuError

__all__ = ["TorchStatus", "arch_supported", "torch_status", "verify"]

# one real CUDA operation: is_available() is True on a GPU the build has no kernels for (Kaggle's P100 with a
# CUDA 12.8 build); only running a kernel tells ("no kernel image is available for execution on the device")
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
if out.get("available") and hasattr(torch.cuda, "get_arch_list"):
    try:
        out["capability"] = list(torch.cuda.get_device_capability(0))
        out["arch_list"] = [str(a) for a in torch.cuda.get_arch_list()]
    except Exception as exc:
        out["op_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if "op_error" not in out:
        try:
            x = torch.arange(16, device="cuda", dtype=torch.float32)
            got = float((x * 2).sum().item())
            torch.cuda.synchronize()
            out["op_ok"] = got == 240.0
            if not out["op_ok"]:
                out["op_error"] = f"2 * arange(16) summed to {got} on the GPU, not 240"
        except Exception as exc:
            text = str(exc).strip().splitlines()
            out["op_ok"] = False
            out["op_error"] = f"{type(exc).__name__}: {text[0] if text else ''}"
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
    capability: tuple[int, int] | None = None  # GPU 0's compute capability, as torch reads it: (7, 5) on a T4
    arch_list: tuple[str, ...] | None = None  # torch.cuda.get_arch_list(): the GPU code the build carries
    op_ok: bool | None = None  # one real CUDA operation ran and gave the right answer (None: not tried)
    op_error: str | None = None  # why it did not

    @property
    def kernels_fit(self) -> bool | None:
        """Whether the build carries code this GPU can run (``None`` when unknown); see :func:`arch_supported`."""
        if self.capability is None or not self.arch_list:
            return None
        return arch_supported(self.capability, self.arch_list)

    @property
    def precision_note(self) -> str | None:
        """On a GPU older than sm_80 (a T4 is sm_75): use float16 autocast, there is no native bfloat16."""
        if self.capability is None or self.capability >= (8, 0):
            return None
        return (
            f"sm_{self.capability[0]}{self.capability[1]} has no native bfloat16: train with float16 autocast "
            "(torch.autocast('cuda', dtype=torch.float16) and a torch.amp.GradScaler), not bfloat16"
        )

    def describe(self) -> str:
        if self.error and self.version is None:
            return f"torch: {self.error}"
        build = f"CUDA {self.cuda}" if self.cuda else "CPU-only build"
        seen = {True: "sees the GPU", False: "sees no GPU", None: "GPU n/a"}[self.available]
        text = f"torch {na(self.version)} ({build}), {seen}"
        if self.op_ok:
            cc = f" on sm_{self.capability[0]}{self.capability[1]}" if self.capability else ""
            text += f", ran a CUDA operation{cc}"
        elif self.op_ok is False:
            text += f", its first CUDA operation failed ({self.op_error})"
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
            cwd="/",  # the working folder may be on a Drive that hangs: the child's start would block on it
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
    cap = data.get("capability")
    arch = data.get("arch_list")
    return TorchStatus(
        version=data.get("version"),
        cuda=data.get("cuda"),
        available=data.get("available"),
        device_count=data.get("device_count"),
        error=data.get("error"),
        capability=(int(cap[0]), int(cap[1])) if isinstance(cap, list) and len(cap) == 2 else None,
        arch_list=tuple(str(a) for a in arch) if isinstance(arch, list) else None,
        op_ok=data.get("op_ok"),
        op_error=data.get("op_error"),
    )


_ARCH = re.compile(r"^(sm|compute)_(\d+?)(\d)([a-z]?)$")


def arch_supported(capability: tuple[int, int], arch_list: tuple[str, ...] | list[str]) -> bool:
    """Whether a build with ``arch_list`` (``["sm_70", "sm_75", "sm_80", ...]``) runs on a GPU of ``capability``.

    Compiled code (``sm_XY``) runs on the same major version with an equal or higher minor one; PTX
    (``compute_XY``) is compiled by the driver for any GPU at least as new. Arch-specific code (``sm_90a``)
    runs only on its own GPU.

    Examples:
        >>> arch_supported((6, 0), ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"])
        False
        >>> arch_supported((7, 5), ["sm_50", "sm_60", "sm_70", "sm_80"])
        True
    """
    for entry in arch_list:
        m = _ARCH.match(entry.strip())
        if m is None:
            continue
        kind, major, minor, suffix = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if kind == "compute" and (major, minor) <= capability:
            return True
        if kind == "sm" and suffix and (major, minor) == capability:
            return True
        if kind == "sm" and not suffix and major == capability[0] and minor <= capability[1]:
            return True
    return False


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
    no_kernels = status.kernels_fit is False or "no kernel image" in (status.op_error or "")
    if no_kernels:
        cc = status.capability
        sm = f"sm_{cc[0]}{cc[1]}" if cc else "this GPU's architecture"
        built = ", ".join(status.arch_list or ()) or "other GPUs"
        kaggle = (
            " On Kaggle, choose the T4 instead: Settings → Accelerator → GPU T4 x2." if cc is not None and cc < (7, 0) else ""
        )
        raise CudaMismatchError(
            f"PyTorch {status.version} has no GPU code for the {name} ({sm}): it is built for {built}"
            + (f"; its first CUDA operation failed: {status.op_error}" if status.op_error else "."),
            f"Install a PyTorch build whose torch.cuda.get_arch_list() lists {sm} (pytorch.org's install selector "
            f"has older CUDA builds, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cu126`), "
            f"then {RESTART}.{kaggle}",
            **facts,
        )
    if status.op_ok is False:
        raise GpuError(
            f"PyTorch {status.version} sees the {name}, but its first CUDA operation failed: {status.op_error}",
            f"{RESTART.capitalize()}; if it fails again, run `nvidia-smi` to check the GPU and its driver.",
        )
    return status
