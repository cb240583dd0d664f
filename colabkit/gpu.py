"""NVIDIA GPUs through NVML: facts per device, the GPU check, and the sampler's view of NVML.

This is the only module that imports ``pynvml`` (package ``nvidia-ml-py``). NVML is initialised
lazily, once, under a lock, and shut down at exit. Nothing here creates a CUDA context: the PyTorch
check runs in a short child process.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import escape
from typing import Any, NamedTuple

from . import runtime
from .display import format_gib
from .errors import CudaMismatchError, GpuError, NoGpuError

__all__ = [
    "DeviceReading",
    "GpuInfo",
    "GpuProcess",
    "NvmlSource",
    "TorchStatus",
    "gpu_processes",
    "gpus",
    "require_gpu",
    "source",
    "torch_status",
    "verify_torch",
]

logger = logging.getLogger(__name__)

GIB = 1024**3

_FIX_BINDINGS = "pip uninstall -y pynvml && pip install -U nvidia-ml-py"
_RESTART = "restart the runtime (Colab: Runtime → Restart session) or the Python process"
_NEW_VM = "get a fresh machine (Colab: Runtime → Disconnect and delete runtime, then reconnect) or reboot it"
_MATCH_BINDINGS = (
    "install the nvidia-ml-py release that matches the driver shown by `nvidia-smi` "
    "(driver 535 → `pip install 'nvidia-ml-py==12.535.*'`), then " + _RESTART
)

# NVML exception class name -> (what happened, the fix). Names in _NO_GPU mean "there is no GPU here".
# tests/test_gpu.py fails naming any class of the installed pynvml that is missing from this table.
_NVML_ERRORS: dict[str, tuple[str, str]] = {
    "NVMLError": ("NVML failed", "run `nvidia-smi` to see the driver's state, then " + _RESTART),
    "NVMLLibraryMismatchError": (
        "the nvidia-ml-py bindings do not match the driver's NVML library",
        _MATCH_BINDINGS,
    ),
    "NVMLError_LibraryNotFound": ("NVML library libnvidia-ml.so.1 not found", ""),
    "NVMLError_DriverNotLoaded": ("NVIDIA driver not loaded", ""),
    "NVMLError_Uninitialized": ("NVML was used before it was initialised", _RESTART),
    "NVMLError_AlreadyInitialized": ("NVML was initialised twice", _RESTART),
    "NVMLError_InvalidArgument": ("NVML rejected an argument", _RESTART),
    "NVMLError_NotSupported": (
        "this GPU or driver does not support the query",
        "upgrade the NVIDIA driver, or ignore this field",
    ),
    "NVMLError_FreqNotSupported": (
        "this GPU does not support the clock query",
        "upgrade the NVIDIA driver, or ignore this field",
    ),
    "NVMLError_VgpuEccNotSupported": ("this virtual GPU does not support ECC queries", "ignore this field"),
    "NVMLError_ResetTypeNotSupported": (
        "this GPU does not support that reset type",
        "ask the machine's administrator to reset the GPU",
    ),
    "NVMLError_FunctionNotFound": (
        "the driver is too old for this NVML call",
        "upgrade the NVIDIA driver, or " + _MATCH_BINDINGS,
    ),
    "NVMLError_ArgumentVersionMismatch": (
        "the nvidia-ml-py bindings are newer than the driver",
        _MATCH_BINDINGS,
    ),
    "NVMLError_Deprecated": (
        "the driver no longer supports this NVML call",
        "upgrade colabkit-gpu and nvidia-ml-py: pip install -U colabkit-gpu nvidia-ml-py",
    ),
    "NVMLError_NoPermission": (
        "NVML refused the query: insufficient permissions",
        "run as a user allowed to query the GPU (root, or a member of the video group)",
    ),
    "NVMLError_NotFound": (
        "NVML did not find the object asked for",
        "check the GPU index against `nvidia-smi -L`",
    ),
    "NVMLError_GpuNotFound": (
        "the GPU asked for was not found",
        "check the GPU index against `nvidia-smi -L`",
    ),
    "NVMLError_InsufficientSize": (
        "NVML needed a larger buffer",
        "upgrade nvidia-ml-py: pip install -U nvidia-ml-py",
    ),
    "NVMLError_InsufficientPower": ("the GPU's external power cables are not connected properly", _NEW_VM),
    "NVMLError_InsufficientResources": ("the GPU ran out of resources for the query", _RESTART),
    "NVMLError_Memory": (
        "the driver ran out of host memory",
        "free RAM (end other processes), then " + _RESTART,
    ),
    "NVMLError_Timeout": ("the driver timed out", "run `nvidia-smi`; if it hangs too, " + _NEW_VM),
    "NVMLError_IrqIssue": ("the driver reports an interrupt problem with the GPU", _NEW_VM),
    "NVMLError_CorruptedInforom": ("the GPU's infoROM is corrupted", _NEW_VM),
    "NVMLError_GpuIsLost": ("the GPU fell off the bus and stopped answering", _NEW_VM),
    "NVMLError_ResetRequired": ("the GPU needs a reset", _NEW_VM),
    "NVMLError_OperatingSystem": ("the operating system blocked the request", _RESTART),
    "NVMLError_LibRmVersionMismatch": (
        "the driver's kernel module and its NVML library have different versions (driver upgraded without reboot)",
        "reboot the machine so the new driver's kernel module loads",
    ),
    "NVMLError_InUse": ("the GPU is in use by another operation", "wait for it to finish, then try again"),
    "NVMLError_NoData": ("NVML has no data yet", "try again in a moment"),
    "NVMLError_NotReady": ("the GPU is not ready yet", "try again in a moment"),
    "NVMLError_InvalidState": ("the GPU is in an invalid state", _NEW_VM),
    "NVMLError_Unknown": (
        "the driver reported an unknown error",
        "run `nvidia-smi`; if it fails too, " + _NEW_VM,
    ),
}
_NO_GPU = frozenset({"NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"})


# --- records ---------------------------------------------------------------------------------------


def _na(value: object) -> str:
    return "n/a" if value is None else str(value)


@dataclass(frozen=True)
class GpuInfo:
    """Facts about one GPU as NVML reports them; a field NVML cannot read is ``None``.

    Memory is in bytes (``memory_used`` counts as nvidia-smi does: driver-reserved memory excluded
    where the driver supports memory info v2), ``power_w`` in watts, ``temperature_c`` in °C.
    """

    index: int
    name: str
    uuid: str | None = None
    memory_total: int | None = None  # bytes
    memory_used: int | None = None  # bytes
    memory_free: int | None = None  # bytes
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # "12.4": the newest CUDA the driver supports
    compute_capability: tuple[int, int] | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    utilization_pct: int | None = None

    def describe(self) -> str:
        """One line, e.g. ``0: Tesla T4, 15.0 GiB (0.3 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5``."""
        cc = "n/a" if self.compute_capability is None else "{}.{}".format(*self.compute_capability)
        return (
            f"{self.index}: {self.name}, {format_gib(self.memory_total)} ({format_gib(self.memory_used)} used), "
            f"driver {_na(self.driver_version)}, CUDA {_na(self.cuda_driver_version)}, sm {cc}"
        )

    def __repr__(self) -> str:
        return f"GpuInfo({self.describe()})"

    def _repr_html_(self) -> str:
        return f"<code>{escape(self.describe())}</code>"


class DeviceReading(NamedTuple):
    """One sample of a device: bytes, %, °C, W; ``None`` where NVML cannot say."""

    used: int | None
    total: int | None
    util: int | None
    temp: int | None
    power_w: float | None


@dataclass(frozen=True)
class GpuProcess:
    """A process holding GPU memory: host ``pid``, ``used_bytes`` (``None`` if NVML hides it), its command line."""

    gpu_index: int
    pid: int
    used_bytes: int | None
    command: str | None

    def __repr__(self) -> str:
        return f"GpuProcess(gpu={self.gpu_index}, pid={self.pid}, used={format_gib(self.used_bytes)}, command={_na(self.command)!r})"

    def _repr_html_(self) -> str:
        return (
            f"<code>GPU {self.gpu_index}: pid {self.pid}, {escape(format_gib(self.used_bytes))}, "
            f"{escape(_na(self.command))}</code>"
        )


# --- the NVML session ------------------------------------------------------------------------------


class _Session:
    """The NVML library in use, whether it initialised, and what it supports (probed once)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        # why init failed, kept: a process cannot gain a driver or change its runtime type
        self.error: GpuError | None = None
        self.no_gpu_reason: str | None = None
        self.no_gpu_cause: BaseException | None = None
        self.started = False
        self.memory_v2: bool | None = None
        self.handles: dict[int, Any] = {}


_lock = threading.RLock()
_injected: Any = None  # a library set by _use_library (tests); None = import pynvml
_session: _Session | None = None
_atexit_registered = False


def _import_pynvml() -> Any:
    try:
        with warnings.catch_warnings():
            # the deprecated `pynvml` shim over nvidia-ml-py warns on import
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except ImportError:
        raise GpuError(
            "The NVML bindings (package nvidia-ml-py) are not installed.",
            "pip install -U nvidia-ml-py, then " + _RESTART,
        ) from None
    if not hasattr(pynvml, "_nvmlGetFunctionPointer"):
        location = getattr(pynvml, "__file__", None) or "an unknown place"
        raise GpuError(
            f"The `pynvml` module at {location} is the old pynvml 11.x package, which hides NVIDIA's official NVML bindings.",
            f"{_FIX_BINDINGS}, then {_RESTART}",
        )
    return pynvml


def _shutdown() -> None:
    """Shut NVML down if it was started (registered with atexit)."""
    global _session
    with _lock:
        session, _session = _session, None
    if session is not None and session.started:
        with contextlib.suppress(Exception):
            session.lib.nvmlShutdown()


def _get_session() -> _Session:
    """The started NVML session; raises NoGpuError (no driver) or GpuError (anything else)."""
    global _session, _atexit_registered
    with _lock:
        if _session is None:
            lib = _injected if _injected is not None else _import_pynvml()
            session = _Session(lib)
            try:
                with _map_nvml_errors(lib):
                    lib.nvmlInit()
                session.started = True
            except NoGpuError as exc:
                session.no_gpu_reason, session.no_gpu_cause = exc.reason, exc.__cause__
            except GpuError as exc:
                session.error = exc
            _session = session
            if session.started and not _atexit_registered:
                atexit.register(_shutdown)
                _atexit_registered = True
        if _session.no_gpu_reason is not None:
            raise _no_gpu_error(_session.no_gpu_reason) from _session.no_gpu_cause
        if _session.error is not None:
            raise _session.error
        return _session


@contextlib.contextmanager
def _use_library(lib: Any) -> Iterator[Any]:
    """Use ``lib`` (a module with pynvml's names) instead of pynvml inside the block; for tests."""
    global _injected, _session
    with _lock:
        previous = (_injected, _session)
        _injected, _session = lib, None
    try:
        yield lib
    finally:
        _shutdown()
        with _lock:
            _injected, _session = previous


def _error_entry(exc: BaseException) -> tuple[str, tuple[str, str]]:
    for cls in type(exc).__mro__:
        if cls.__name__ in _NVML_ERRORS:
            return cls.__name__, _NVML_ERRORS[cls.__name__]
    return "NVMLError", _NVML_ERRORS["NVMLError"]


def _nvml_exceptions(lib: Any) -> tuple[type[BaseException], ...]:
    return tuple(
        cls
        for cls in (getattr(lib, "NVMLError", None), getattr(lib, "NVMLLibraryMismatchError", None))
        if isinstance(cls, type)
    )


@contextlib.contextmanager
def _map_nvml_errors(lib: Any = None) -> Iterator[None]:
    """Turn NVML exceptions into colabkit errors: no driver/library → NoGpuError, the rest → GpuError with a fix."""
    if lib is None:
        lib = _injected if _injected is not None else sys.modules.get("pynvml")
    caught = _nvml_exceptions(lib) if lib is not None else ()
    try:
        yield
    except caught as exc:
        name, (what, fix) = _error_entry(exc)
        if name in _NO_GPU:
            raise _no_gpu_error(what) from exc
        raise GpuError(f"NVML: {what} ({type(exc).__name__}: {exc}).", fix) from exc


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _query(session: _Session, fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``None`` when NVML cannot answer (logged at DEBUG): a field NVML cannot read is None."""
    try:
        return fn()
    except _nvml_exceptions(session.lib) as exc:
        logger.debug("NVML query failed: %s: %s", type(exc).__name__, exc)
        return None


def _handle(session: _Session, index: int) -> Any:
    handle = session.handles.get(index)
    if handle is None:
        with _map_nvml_errors(session.lib):
            handle = session.lib.nvmlDeviceGetHandleByIndex(index)
        session.handles[index] = handle
    return handle


def _memory(session: _Session, handle: Any) -> Any:
    """Memory info v2 (``used`` as nvidia-smi shows it), falling back to v1 on old drivers; probed once."""
    lib = session.lib
    if session.memory_v2 is not False:
        version = getattr(lib, "nvmlMemory_v2", None)
        if version is not None:
            try:
                info = lib.nvmlDeviceGetMemoryInfo(handle, version=version)
            except getattr(lib, "NVMLError_FunctionNotFound", ()) as exc:
                logger.debug(
                    "NVML memory info v2 unavailable (%s): using v1, which counts reserved memory as used",
                    exc,
                )
                session.memory_v2 = False
            else:
                session.memory_v2 = True
                return info
        else:
            session.memory_v2 = False
    return lib.nvmlDeviceGetMemoryInfo(handle)


def _cuda_version(raw: int | None) -> str | None:
    if not raw:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _device_info(session: _Session, index: int, driver: str | None, cuda: str | None) -> GpuInfo:
    lib = session.lib
    try:
        handle = _handle(session, index)
    except GpuError as exc:
        return GpuInfo(
            index=index,
            name=f"unreadable GPU ({exc.message})",
            driver_version=driver,
            cuda_driver_version=cuda,
        )
    memory = _query(session, lambda: _memory(session, handle))
    cc = _query(session, lambda: lib.nvmlDeviceGetCudaComputeCapability(handle))
    power_mw = _query(session, lambda: lib.nvmlDeviceGetPowerUsage(handle))
    util = _query(session, lambda: lib.nvmlDeviceGetUtilizationRates(handle))
    name = _query(session, lambda: lib.nvmlDeviceGetName(handle))
    uuid = _query(session, lambda: lib.nvmlDeviceGetUUID(handle))
    return GpuInfo(
        index=index,
        name=_text(name) if name is not None else "n/a",
        uuid=_text(uuid) if uuid is not None else None,
        memory_total=int(memory.total) if memory is not None else None,
        memory_used=int(memory.used) if memory is not None else None,
        memory_free=int(memory.free) if memory is not None else None,
        driver_version=driver,
        cuda_driver_version=cuda,
        compute_capability=(int(cc[0]), int(cc[1])) if cc is not None else None,
        temperature_c=_query(
            session, lambda: int(lib.nvmlDeviceGetTemperature(handle, lib.NVML_TEMPERATURE_GPU))
        ),
        power_w=power_mw / 1000.0 if power_mw is not None else None,
        utilization_pct=int(util.gpu) if util is not None else None,
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
    try:
        session = _get_session()
    except NoGpuError:
        return []
    with _lock:
        with _map_nvml_errors(session.lib):
            count = int(session.lib.nvmlDeviceGetCount())
        lib = session.lib
        driver = _query(session, lib.nvmlSystemGetDriverVersion)
        driver = _text(driver) if driver is not None else None
        cuda = _cuda_version(_query(session, lib.nvmlSystemGetCudaDriverVersion))
        return [_device_info(session, i, driver, cuda) for i in range(count)]


def _no_gpu_error(reason: str) -> NoGpuError:
    """NoGpuError whose hint is the fix for the runtime this process runs in."""
    rt = runtime.detect()
    if rt.is_colab and rt.tpu:
        message = f"This is a Colab TPU runtime: it has no NVIDIA GPU ({reason})."
    elif rt.is_colab:
        message = f"No NVIDIA GPU on this Colab runtime ({reason})."
    elif rt.kind == "kaggle":
        message = f"No NVIDIA GPU in this Kaggle notebook ({reason})."
    elif rt.tpu:
        message = f"This is a TPU runtime: it has no NVIDIA GPU ({reason})."
    else:
        message = f"No NVIDIA GPU found ({reason})."
    if rt.is_colab:
        hint = (
            "In the Colab menu choose Runtime → Change runtime type → T4 GPU → Save, then re-run the notebook "
            'from the top (the new runtime starts empty). If Colab answers "Cannot connect to GPU backend", '
            "you have reached Colab's GPU usage limits: wait a few hours and try again, or use Colab Pro."
        )
    elif rt.kind == "kaggle":
        hint = (
            "In the notebook editor open Settings → Accelerator → GPU T4 x2 (GPUs need a phone-verified "
            "Kaggle account: Settings → Phone verification), then re-run the cell."
        )
    elif rt.tpu:
        hint = "Start a runtime or machine with an NVIDIA GPU instead of a TPU."
    else:
        hint = (
            "Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it; "
            "in a container, start it with GPU access (docker run --gpus all ...)."
        )
    return NoGpuError(message, hint, runtime=rt.kind, reason=reason)


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
    found = gpus()
    if not found:
        _get_session()  # raises the no-driver NoGpuError
        raise _no_gpu_error("NVML sees 0 GPUs")
    fits = found
    if name is not None:
        fits = [g for g in fits if name.lower() in g.name.lower()]
        if not fits:
            names = ", ".join(g.name for g in found)
            raise NoGpuError(
                f"No GPU named {name!r} here: found {names}.",
                "Choose another GPU type in Runtime → Change runtime type (on Colab), or drop name= to take any GPU.",
                runtime=runtime.detect().kind,
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
                runtime=runtime.detect().kind,
                reason=f"no GPU with {min_memory_gib:g} GiB",
            )
        fits = big
    chosen = fits[0]
    if check_torch:
        verify_torch(chosen)
    return chosen


# --- the sampler's view ----------------------------------------------------------------------------


class NvmlSource:
    """NVML as the memory sampler reads it: cheap calls, and probes that never raise."""

    def device_count(self) -> int:
        """Number of GPUs, 0 with no GPU or when NVML fails."""
        try:
            session = _get_session()
            with _lock:
                return int(session.lib.nvmlDeviceGetCount())
        except Exception as exc:  # a probe: the sampler must go on
            logger.debug("NVML device count failed: %s", exc)
            return 0

    def read(self, index: int) -> DeviceReading:
        """Memory used/total (v2, v1 fallback), utilisation %, temperature °C, power W of one GPU."""
        try:
            session = _get_session()
            with _lock:
                handle = _handle(session, index)
                lib = session.lib
                memory = _query(session, lambda: _memory(session, handle))
                util = _query(session, lambda: lib.nvmlDeviceGetUtilizationRates(handle))
                temp = _query(session, lambda: lib.nvmlDeviceGetTemperature(handle, lib.NVML_TEMPERATURE_GPU))
                power_mw = _query(session, lambda: lib.nvmlDeviceGetPowerUsage(handle))
        except Exception as exc:
            logger.debug("NVML read of GPU %d failed: %s", index, exc)
            return DeviceReading(None, None, None, None, None)
        return DeviceReading(
            used=int(memory.used) if memory is not None else None,
            total=int(memory.total) if memory is not None else None,
            util=int(util.gpu) if util is not None else None,
            temp=int(temp) if temp is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
        )

    def processes(self, index: int) -> list[tuple[int, int | None]]:
        """``(host pid, used GPU bytes or None)`` of the compute and graphics processes on one GPU."""
        try:
            session = _get_session()
            with _lock:
                handle = _handle(session, index)
                found: dict[int, int | None] = {}
                for kind in ("Compute", "Graphics"):
                    for proc in _process_list(session, handle, kind):
                        used = getattr(proc, "usedGpuMemory", None)
                        pid = int(proc.pid)
                        if found.get(pid) is None:
                            found[pid] = int(used) if used is not None else None
                        elif used is not None:
                            found[pid] = max(found[pid] or 0, int(used))
        except Exception as exc:
            logger.debug("NVML process list of GPU %d failed: %s", index, exc)
            return []
        return list(found.items())

    def __repr__(self) -> str:
        return "<NvmlSource>"


def _process_list(session: _Session, handle: Any, kind: str) -> list[Any]:
    """Running processes; the unversioned call raises NVMLLibraryMismatchError on older drivers: try older versions."""
    lib = session.lib
    names = [f"nvmlDeviceGet{kind}RunningProcesses", f"nvmlDeviceGet{kind}RunningProcesses_v2"]
    mismatch = getattr(lib, "NVMLLibraryMismatchError", ())
    for fn_name in names:
        fn = getattr(lib, fn_name, None)
        if fn is None:
            continue
        try:
            return list(fn(handle) or [])
        except mismatch as exc:
            logger.debug("%s: %s", fn_name, exc)
        except _nvml_exceptions(lib) as exc:
            logger.debug("%s failed: %s", fn_name, exc)
            return []
    return []


_source: NvmlSource | None = None


def source() -> NvmlSource:
    """The shared NVML source (NVML initialised once, lazily, shut down at exit)."""
    global _source
    with _lock:
        if _source is None:
            _source = NvmlSource()
        return _source


def _command_line(pid: int) -> str | None:
    try:
        import psutil

        cmd = psutil.Process(pid).cmdline()
    except Exception:  # gone, another PID namespace, or no permission
        return None
    return " ".join(cmd) if cmd else None


def gpu_processes() -> list[GpuProcess]:
    """Every process holding GPU memory, over all GPUs, with its command line (``None`` if not visible here).

    Examples:
        >>> colabkit.gpu.gpu_processes()
        [GpuProcess(gpu=0, pid=4242, used=3.2 GiB, command='python3 train.py')]
    """
    src = source()
    out = []
    for index in range(src.device_count()):
        for pid, used in src.processes(index):
            out.append(GpuProcess(gpu_index=index, pid=pid, used_bytes=used, command=_command_line(pid)))
    return out


# --- PyTorch, checked in a child process -----------------------------------------------------------

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
        text = f"torch {_na(self.version)} ({build}), {seen}"
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
        >>> colabkit.gpu.verify_torch()
        TorchStatus(torch 2.5.1+cu124 (CUDA 12.4), sees the GPU)
    """
    if gpu is None:
        found = gpus()
        if not found:
            return None
        gpu = found[0]
    status = torch_status(timeout)
    if status is None or status.version is None:
        return status
    driver_cuda = gpu.cuda_driver_version
    build = (
        f"the PyTorch build for CUDA {driver_cuda} (or older)" if driver_cuda else "a PyTorch build with CUDA"
    )
    fix = f"Install {build} from pytorch.org's install selector (its `pip install torch --index-url ...` line), then {_RESTART}."
    facts = {"torch_version": status.version, "torch_cuda": status.cuda, "driver_cuda": driver_cuda}
    if status.cuda is None:
        raise CudaMismatchError(
            f"PyTorch {status.version} is a CPU-only build: it cannot use the {gpu.name}.", fix, **facts
        )
    built, driver = _version_tuple(status.cuda), _version_tuple(driver_cuda)
    newer = built is not None and driver is not None and built > driver
    # CUDA minor-version compatibility lets a 12.6 build run on a 12.4 driver; a newer major never runs
    if newer and (built[0] > driver[0] or not status.available):
        raise CudaMismatchError(
            f"PyTorch {status.version} is built for CUDA {status.cuda}, newer than the CUDA {driver_cuda} "
            f"the NVIDIA driver {_na(gpu.driver_version)} supports.",
            fix + " Or upgrade the NVIDIA driver.",
            **facts,
        )
    if status.available is False:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        cvd = (
            f" CUDA_VISIBLE_DEVICES is {visible!r}: unset it or list the GPU." if visible is not None else ""
        )
        raise GpuError(
            f"PyTorch {status.version} (CUDA {status.cuda}) sees no GPU although NVML sees the {gpu.name}"
            + (f": {status.error}" if status.error else "."),
            f"{_RESTART.capitalize()}.{cvd}",
        )
    return status
