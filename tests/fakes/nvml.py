"""A scripted stand-in for the ``pynvml`` module (package nvidia-ml-py): same function names, constants
and exception classes, with numbers and failures set by the test.

    nvml = FakeNvml([FakeDevice(name="Tesla T4", total=15 * GIB, used=[1 * GIB, 2 * GIB])])
    with colabkit._nvml._use_library(nvml):
        ...

``FakeDevice.used`` may be a list: each memory read takes the next value (the last one repeats), so
monitor arithmetic can be checked exactly. ``fail={"nvmlDeviceGetPowerUsage": NVMLError_NotSupported}``
makes that call raise. Every call is recorded in ``FakeNvml.calls``; calls before ``nvmlInit`` raise
``NVMLError_Uninitialized`` as the real library does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

GIB = 1024**3
MIB = 1024**2

NVML_SUCCESS = 0
NVML_TEMPERATURE_GPU = 0
nvmlMemory_v2 = 0x02000028  # sizeof(c_nvmlMemory_v2_t) | 2 << 24, as in nvidia-ml-py

# (class name, NVML return code), as nvidia-ml-py defines them
_ERRORS = [
    ("NVMLError_Uninitialized", 1),
    ("NVMLError_InvalidArgument", 2),
    ("NVMLError_NotSupported", 3),
    ("NVMLError_NoPermission", 4),
    ("NVMLError_AlreadyInitialized", 5),
    ("NVMLError_NotFound", 6),
    ("NVMLError_InsufficientSize", 7),
    ("NVMLError_InsufficientPower", 8),
    ("NVMLError_DriverNotLoaded", 9),
    ("NVMLError_Timeout", 10),
    ("NVMLError_IrqIssue", 11),
    ("NVMLError_LibraryNotFound", 12),
    ("NVMLError_FunctionNotFound", 13),
    ("NVMLError_CorruptedInforom", 14),
    ("NVMLError_GpuIsLost", 15),
    ("NVMLError_ResetRequired", 16),
    ("NVMLError_OperatingSystem", 17),
    ("NVMLError_LibRmVersionMismatch", 18),
    ("NVMLError_InUse", 19),
    ("NVMLError_Memory", 20),
    ("NVMLError_NoData", 21),
    ("NVMLError_VgpuEccNotSupported", 22),
    ("NVMLError_InsufficientResources", 23),
    ("NVMLError_FreqNotSupported", 24),
    ("NVMLError_ArgumentVersionMismatch", 25),
    ("NVMLError_Deprecated", 26),
    ("NVMLError_NotReady", 27),
    ("NVMLError_GpuNotFound", 28),
    ("NVMLError_InvalidState", 29),
    ("NVMLError_ResetTypeNotSupported", 30),
    ("NVMLError_Unknown", 999),
]


class NVMLLibraryMismatchError(Exception):
    """Not an NVMLError, as in nvidia-ml-py: raised by unversioned calls the library lacks."""


class NVMLError(Exception):
    """``NVMLError(code)`` builds the subclass for that code; subclasses take no argument."""

    _by_value: dict[int, type[NVMLError]] = {}
    _strings: dict[int, str] = {}

    def __new__(cls, value: int = 999) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._by_value.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int = 999) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        return NVMLError._strings.get(self.value, f"NVML Error with code {self.value}")


def _make(name: str, code: int) -> type[NVMLError]:
    def __new__(cls: type, *args: Any) -> NVMLError:
        return NVMLError.__new__(cls, code)

    def __init__(self: NVMLError, *args: Any) -> None:
        Exception.__init__(self, code)

    return type(name, (NVMLError,), {"__new__": __new__, "__init__": __init__})


for _name, _code in _ERRORS:
    _cls = _make(_name, _code)
    NVMLError._by_value[_code] = _cls
    globals()[_name] = _cls
# what nvidia-ml-py's NVMLError.__str__ gives for these codes without asking the driver
NVMLError._strings.update(
    {
        1: "Uninitialized",
        2: "Invalid Argument",
        3: "Not Supported",
        4: "Insufficient Permissions",
        5: "Already Initialized",
        6: "Not Found",
        7: "Insufficient Size",
        8: "Insufficient External Power",
        9: "Driver Not Loaded",
        10: "Timeout",
        11: "Interrupt Request Issue",
        12: "NVML Shared Library Not Found",
        13: "Function Not Found",
        14: "Corrupted infoROM",
        15: "GPU is lost",
        16: "GPU requires restart",
        17: "The operating system has blocked the request.",
        18: "RM has detected an NVML/RM version mismatch.",
        20: "Insufficient Memory",
        999: "Unknown Error",
    }
)

EXCEPTION_NAMES = ["NVMLError", "NVMLLibraryMismatchError", *(n for n, _ in _ERRORS)]


@dataclass
class FakeDevice:
    """One scripted GPU; byte counts, mW, °C, % as NVML gives them."""

    name: str = "Tesla T4"
    uuid: str = "GPU-00000000-1111-2222-3333-444444444444"
    total: int = 15360 * MIB
    used: int | list[int] = 0  # v2 "used": as nvidia-smi shows it
    reserved: int = 257 * MIB  # counted as used by memory info v1
    util: int = 0
    temp: int = 40
    power_mw: int = 27_000
    cc: tuple[int, int] = (7, 5)
    compute: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used bytes)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    fail: dict[str, BaseException | type[BaseException]] = field(default_factory=dict)
    reads: int = 0

    def next_used(self) -> int:
        if isinstance(self.used, list):
            value = self.used[min(self.reads, len(self.used) - 1)]
        else:
            value = self.used
        self.reads += 1
        return value


class FakeNvml:
    """An object with pynvml's names, passed to ``colabkit._nvml._use_library``."""

    NVML_SUCCESS = NVML_SUCCESS
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    nvmlMemory_v2 = nvmlMemory_v2
    NVMLError = NVMLError
    NVMLLibraryMismatchError = NVMLLibraryMismatchError

    def __init__(
        self,
        devices: list[FakeDevice] | tuple[FakeDevice, ...] = (),
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
        memory_v2: bool = True,
        init_error: BaseException | type[BaseException] | None = None,
        fail: dict[str, BaseException | type[BaseException]] | None = None,
    ) -> None:
        self.devices = list(devices)
        self.driver = driver
        self.cuda = cuda
        self.memory_v2 = memory_v2
        self.init_error = init_error
        self.fail = dict(fail or {})
        self.calls: list[str] = []
        self.initialised = 0  # nvmlInit count minus nvmlShutdown count
        self.init_calls = 0
        self.shutdown_calls = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("NVMLError_"):
            return globals()[name]
        raise AttributeError(name)

    def _nvmlGetFunctionPointer(self, name: str) -> None:  # present in nvidia-ml-py, absent in pynvml 11.x
        return None

    # -- helpers --
    def _enter(self, fn: str, device: FakeDevice | None = None) -> None:
        self.calls.append(fn)
        if fn not in ("nvmlInit", "nvmlShutdown") and self.initialised <= 0:
            raise NVMLError(1)
        for table in (self.fail, device.fail if device is not None else {}):
            if fn in table:
                raise table[fn]() if isinstance(table[fn], type) else table[fn]

    def _device(self, handle: Any) -> FakeDevice:
        return self.devices[handle.index]

    # -- pynvml API --
    def nvmlInit(self) -> None:
        self.init_calls += 1
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise self.init_error() if isinstance(self.init_error, type) else self.init_error
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1
        self._enter("nvmlShutdown")
        if self.initialised <= 0:
            raise NVMLError(1)
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.cuda

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter(
            "nvmlDeviceGetHandleByIndex", self.devices[index] if 0 <= index < len(self.devices) else None
        )
        if not 0 <= index < len(self.devices):
            raise NVMLError(2)
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        device = self._device(handle)
        self._enter("nvmlDeviceGetName", device)
        return device.name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        device = self._device(handle)
        self._enter("nvmlDeviceGetUUID", device)
        return device.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        device = self._device(handle)
        fn = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        self._enter(fn, device)
        if version and not self.memory_v2:
            raise NVMLError(13)
        used = device.next_used()
        if version:
            return SimpleNamespace(
                version=version,
                total=device.total,
                reserved=device.reserved,
                free=device.total - device.reserved - used,
                used=used,
            )
        return SimpleNamespace(
            total=device.total, free=device.total - device.reserved - used, used=used + device.reserved
        )

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        device = self._device(handle)
        self._enter("nvmlDeviceGetCudaComputeCapability", device)
        return device.cc

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        device = self._device(handle)
        self._enter("nvmlDeviceGetTemperature", device)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(2)
        return device.temp

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        device = self._device(handle)
        self._enter("nvmlDeviceGetPowerUsage", device)
        return device.power_mw

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        device = self._device(handle)
        self._enter("nvmlDeviceGetUtilizationRates", device)
        return SimpleNamespace(gpu=device.util, memory=0)

    def _procs(self, rows: list[tuple[int, int | None]]) -> list[Any]:
        return [
            SimpleNamespace(
                pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF
            )
            for pid, used in rows
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        device = self._device(handle)
        self._enter("nvmlDeviceGetComputeRunningProcesses", device)
        return self._procs(device.compute)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[Any]:
        device = self._device(handle)
        self._enter("nvmlDeviceGetComputeRunningProcesses_v2", device)
        return self._procs(device.compute)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[Any]:
        device = self._device(handle)
        self._enter("nvmlDeviceGetGraphicsRunningProcesses", device)
        return self._procs(device.graphics)

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: Any) -> list[Any]:
        device = self._device(handle)
        self._enter("nvmlDeviceGetGraphicsRunningProcesses_v2", device)
        return self._procs(device.graphics)


def error(name: str) -> BaseException:
    """An instance of the fake exception class called ``name``."""
    cls = NVMLLibraryMismatchError if name == "NVMLLibraryMismatchError" else globals()[name]
    if cls is NVMLLibraryMismatchError:
        return cls("Unversioned function called and the pyNVML version does not match the NVML lib version.")
    if cls is NVMLError:
        return NVMLError(12345)
    return cls()
