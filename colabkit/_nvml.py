"""The NVML door: the only module that imports ``pynvml`` (package ``nvidia-ml-py``).

NVML is initialised lazily, once, under a lock, and shut down at exit; its exceptions become colabkit
errors with the fix in one place (``_map_nvml_errors``). What NVML reports comes out as colabkit
records: ``GpuInfo`` per device, ``DeviceReading`` per sample, ``(pid, bytes)`` per process. Nothing
here creates a CUDA context.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import escape
from typing import Any, NamedTuple

from . import _runtime
from ._format import format_gib, na
from .errors import RESTART, GpuError, NoGpuError

__all__ = [
    "DeviceReading",
    "GpuInfo",
    "NvmlSource",
    "devices",
    "no_gpu_error",
    "require_devices",
    "source",
]

logger = logging.getLogger(__name__)

_FIX_BINDINGS = "pip uninstall -y pynvml && pip install -U nvidia-ml-py"
_NEW_VM = "get a fresh machine (Colab: Runtime → Disconnect and delete runtime, then reconnect) or reboot it"
_MATCH_BINDINGS = (
    "install the nvidia-ml-py release that matches the driver shown by `nvidia-smi` "
    "(driver 535 → `pip install 'nvidia-ml-py==12.535.*'`), then " + RESTART
)

# NVML exception class name -> (what happened, the fix). Names in _NO_GPU mean "there is no GPU here".
# tests/test_gpu.py fails naming any class of the installed pynvml that is missing from this table.
_NVML_ERRORS: dict[str, tuple[str, str]] = {
    "NVMLError": ("NVML failed", "run `nvidia-smi` to see the driver's state, then " + RESTART),
    "NVMLLibraryMismatchError": (
        "the nvidia-ml-py bindings do not match the driver's NVML library",
        _MATCH_BINDINGS,
    ),
    "NVMLError_LibraryNotFound": ("NVML library libnvidia-ml.so.1 not found", ""),
    "NVMLError_DriverNotLoaded": ("NVIDIA driver not loaded", ""),
    "NVMLError_Uninitialized": ("NVML was used before it was initialised", RESTART),
    "NVMLError_AlreadyInitialized": ("NVML was initialised twice", RESTART),
    "NVMLError_InvalidArgument": ("NVML rejected an argument", RESTART),
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
    "NVMLError_InsufficientResources": ("the GPU ran out of resources for the query", RESTART),
    "NVMLError_Memory": (
        "the driver ran out of host memory",
        "free RAM (end other processes), then " + RESTART,
    ),
    "NVMLError_Timeout": ("the driver timed out", "run `nvidia-smi`; if it hangs too, " + _NEW_VM),
    "NVMLError_IrqIssue": ("the driver reports an interrupt problem with the GPU", _NEW_VM),
    "NVMLError_CorruptedInforom": ("the GPU's infoROM is corrupted", _NEW_VM),
    "NVMLError_GpuIsLost": ("the GPU fell off the bus and stopped answering", _NEW_VM),
    "NVMLError_ResetRequired": ("the GPU needs a reset", _NEW_VM),
    "NVMLError_OperatingSystem": ("the operating system blocked the request", RESTART),
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
            f"driver {na(self.driver_version)}, CUDA {na(self.cuda_driver_version)}, sm {cc}"
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
            "pip install -U nvidia-ml-py, then " + RESTART,
        ) from None
    if not hasattr(pynvml, "_nvmlGetFunctionPointer"):
        location = getattr(pynvml, "__file__", None) or "an unknown place"
        raise GpuError(
            f"The `pynvml` module at {location} is the old pynvml 11.x package, which hides NVIDIA's official NVML bindings.",
            f"{_FIX_BINDINGS}, then {RESTART}",
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
            raise no_gpu_error(_session.no_gpu_reason) from _session.no_gpu_cause
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
            raise no_gpu_error(what) from exc
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


def devices() -> list[GpuInfo]:
    """Every GPU NVML sees, as ``GpuInfo``; ``[]`` when there is no driver or no GPU.

    Raises:
        GpuError: NVML is there but failed (see ``gpus()``).
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


def no_gpu_error(reason: str) -> NoGpuError:
    """NoGpuError whose hint is the fix for the runtime this process runs in."""
    rt = _runtime.detect_runtime()
    return NoGpuError.for_runtime(reason, rt.kind, tpu=rt.tpu)


def require_devices() -> list[GpuInfo]:
    """Every GPU NVML sees; with none, the NoGpuError that says why (no driver, or NVML sees 0 GPUs)."""
    found = devices()
    if not found:
        _get_session()  # raises the no-driver NoGpuError
        raise no_gpu_error("NVML sees 0 GPUs")
    return found


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
