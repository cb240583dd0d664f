"""colabkit._nvml, _gpu and _torch: NVML facts, error mapping, the GPU check per runtime, the sampler's source,
the torch check."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pynvml
import pytest
from conftest import NO_DRIVER
from fakes import nvml as fake
from fakes.nvml import GIB, MIB, FakeDevice, FakeNvml

import colabkit
from colabkit import _gpu, _nvml, _torch
from colabkit.errors import CudaMismatchError, GpuError, NoGpuError

T4_TOTAL = 15360 * MIB
COLAB_MENU = "Runtime → Change runtime type → T4 GPU → Save"


def t4(**kw) -> FakeDevice:
    return FakeDevice(**kw)


def a100(**kw) -> FakeDevice:
    kw.setdefault("name", "NVIDIA A100-SXM4-40GB")
    kw.setdefault("total", 40960 * MIB)
    kw.setdefault("uuid", "GPU-a100")
    kw.setdefault("cc", (8, 0))
    return FakeDevice(**kw)


@pytest.fixture
def nvml():
    """A fake NVML with one idle T4, in use for the test."""
    lib = FakeNvml([t4(used=300 * MIB, util=7, temp=41, power_mw=27_500)])
    with _nvml._use_library(lib):
        yield lib
    assert lib.initialised == 0, "NVML was not shut down"


def use(lib: FakeNvml):
    return _nvml._use_library(lib)


# --- gpus() ----------------------------------------------------------------------------------------


def test_gpus_reports_every_field(nvml):
    (info,) = colabkit.gpus()
    assert info == _gpu.GpuInfo(
        index=0,
        name="Tesla T4",
        uuid="GPU-00000000-1111-2222-3333-444444444444",
        memory_total=T4_TOTAL,
        memory_used=300 * MIB,
        memory_free=T4_TOTAL - 257 * MIB - 300 * MIB,
        driver_version="550.54.15",
        cuda_driver_version="12.4",
        compute_capability=(7, 5),
        temperature_c=41,
        power_w=27.5,
        utilization_pct=7,
    )
    assert repr(info) == "GpuInfo(0: Tesla T4, 15.0 GiB (0.3 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5)"
    assert (
        info._repr_html_()
        == "<code>0: Tesla T4, 15.0 GiB (0.3 GiB used), driver 550.54.15, CUDA 12.4, sm 7.5</code>"
    )


def test_html_repr_is_escaped():
    info = _gpu.GpuInfo(index=0, name="<b>GPU</b> & co")
    assert "<b>" not in info._repr_html_()
    assert "&lt;b&gt;GPU&lt;/b&gt; &amp; co" in info._repr_html_()
    assert "n/a GiB" not in repr(info) and "n/a (n/a used)" in repr(info)


def test_nvml_initialised_once_and_shut_down_at_the_end():
    lib = FakeNvml([t4(), a100()])
    with use(lib):
        assert [g.name for g in colabkit.gpus()] == ["Tesla T4", "NVIDIA A100-SXM4-40GB"]
        colabkit.gpus()
        _nvml.source().read(1)
        assert (lib.init_calls, lib.shutdown_calls) == (1, 0)
    assert (lib.init_calls, lib.shutdown_calls, lib.initialised) == (1, 1, 0)


def test_init_is_serialised_across_threads():
    lib = FakeNvml([t4()])
    results: list[int] = []
    with use(lib):
        barrier = threading.Barrier(8)

        def worker():
            barrier.wait()
            results.append(len(colabkit.gpus()))

        threads = [threading.Thread(target=worker, name=f"test-gpus-{i}") for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [1] * 8
    assert lib.init_calls == 1


def test_memory_v2_probed_once_then_v1_fallback(caplog):
    lib = FakeNvml([t4(used=1 * GIB)], memory_v2=False)
    with use(lib), caplog.at_level(logging.DEBUG, logger="colabkit._nvml"):
        first = colabkit.gpus()[0]
        second = colabkit.gpus()[0]
        _nvml.source().read(0)
    assert lib.calls.count("nvmlDeviceGetMemoryInfo_v2") == 1
    assert lib.calls.count("nvmlDeviceGetMemoryInfo") == 3
    # v1 counts the driver-reserved memory as used
    assert first.memory_used == second.memory_used == 1 * GIB + 257 * MIB
    assert "memory info v2 unavailable" in caplog.text


def test_memory_v2_used_when_supported(nvml):
    colabkit.gpus()
    colabkit.gpus()
    assert nvml.calls.count("nvmlDeviceGetMemoryInfo_v2") == 2
    assert "nvmlDeviceGetMemoryInfo" not in nvml.calls


def test_field_nvml_cannot_read_is_none():
    device = t4(
        fail={
            "nvmlDeviceGetPowerUsage": fake.NVMLError_NotSupported,
            "nvmlDeviceGetTemperature": fake.NVMLError_GpuIsLost,
            "nvmlDeviceGetUUID": fake.error("NVMLLibraryMismatchError"),
            "nvmlDeviceGetMemoryInfo_v2": fake.NVMLError_NoPermission,
        }
    )
    with use(FakeNvml([device], fail={"nvmlSystemGetCudaDriverVersion": fake.NVMLError_FunctionNotFound})):
        (info,) = colabkit.gpus()
    assert (info.power_w, info.temperature_c, info.uuid, info.cuda_driver_version) == (None, None, None, None)
    assert (info.memory_total, info.memory_used, info.memory_free) == (None, None, None)
    assert info.name == "Tesla T4" and info.compute_capability == (7, 5) and info.utilization_pct == 0
    assert "15.0 GiB" not in repr(info) and "n/a (n/a used)" in repr(info)


def test_unreadable_device_is_listed_not_raised():
    lib = FakeNvml([t4(fail={"nvmlDeviceGetHandleByIndex": fake.NVMLError_GpuIsLost}), a100()])
    with use(lib):
        lost, ok = colabkit.gpus()
    assert lost.name.startswith("unreadable GPU (NVML: the GPU fell off the bus")
    assert lost.memory_total is None and lost.driver_version == "550.54.15"
    assert ok.name == "NVIDIA A100-SXM4-40GB"


def test_bytes_names_from_old_bindings_are_decoded():
    lib = FakeNvml([t4(name=b"Tesla T4", uuid=b"GPU-x")], driver=b"470.82.01")
    with use(lib):
        (info,) = colabkit.gpus()
    assert (info.name, info.uuid, info.driver_version) == ("Tesla T4", "GPU-x", "470.82.01")


# --- NVML failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"])
def test_no_driver_means_no_gpu(name):
    lib = FakeNvml([t4()], init_error=getattr(fake, name))
    with use(lib):
        assert colabkit.gpus() == []
        assert _nvml.source().device_count() == 0
        with pytest.raises(NoGpuError) as err:
            colabkit.require_gpu()
        colabkit.gpus()
    assert lib.init_calls == 1, "a failed init is remembered, not retried on every call"
    assert lib.shutdown_calls == 0
    reason = {"NVMLError_LibraryNotFound": "NVML library libnvidia-ml.so.1 not found"}.get(
        name, "NVIDIA driver not loaded"
    )
    assert err.value.message == f"No NVIDIA GPU found ({reason})."
    assert err.value.reason == reason
    assert isinstance(err.value.__cause__, getattr(fake, name))


@pytest.mark.parametrize(
    ("error", "what", "fix"),
    [
        (
            fake.NVMLError_LibRmVersionMismatch,
            "kernel module and its NVML library have different versions",
            "reboot the machine",
        ),
        (fake.NVMLError_NoPermission, "insufficient permissions", "run as a user allowed to query the GPU"),
        (
            fake.error("NVMLLibraryMismatchError"),
            "bindings do not match the driver",
            "nvidia-ml-py==12.535.*",
        ),
        (fake.NVMLError(4242), "NVML failed", "run `nvidia-smi`"),
    ],
)
def test_other_init_failures_are_gpu_errors_with_a_fix(error, what, fix):
    with use(FakeNvml([t4()], init_error=error)):
        with pytest.raises(GpuError) as err:
            colabkit.gpus()
    assert not isinstance(err.value, NoGpuError)
    assert err.value.message.startswith("NVML: ") and what in err.value.message
    assert fix in err.value.hint
    assert err.value.__cause__ is not None


def test_every_known_nvml_exception_is_mapped():
    known = sorted(n for n in dir(pynvml) if n.startswith("NVMLError")) + ["NVMLLibraryMismatchError"]
    unmapped = [n for n in known if n not in _nvml._NVML_ERRORS]
    assert not unmapped, f"NVML exceptions without a colabkit mapping in _nvml._NVML_ERRORS: {unmapped}"
    # the fake mirrors the real class names
    assert sorted(fake.EXCEPTION_NAMES) == sorted(known)
    assert not issubclass(pynvml.NVMLLibraryMismatchError, pynvml.NVMLError)
    for name in known:
        cls = getattr(pynvml, name)
        exc = (
            cls("mismatch")
            if name == "NVMLLibraryMismatchError"
            else cls(999)
            if name == "NVMLError"
            else cls()
        )
        with pytest.raises(GpuError) as err, _nvml._map_nvml_errors(pynvml):
            raise exc
        assert err.value.__cause__ is exc
        assert err.value.hint, f"{name} maps to an error without a fix"
        assert isinstance(err.value, NoGpuError) == (
            name in ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
        ), name


def test_map_leaves_other_exceptions_alone():
    with pytest.raises(KeyError), _nvml._map_nvml_errors(pynvml):
        raise KeyError("x")


def test_old_pynvml_package_shadowing_nvidia_ml_py(tmp_path):
    shadow = tmp_path / "shadow" / "pynvml"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "def nvmlInit():\n    raise SystemExit('the shadowing package was used')\n"
    )
    code = textwrap.dedent(
        """
        import colabkit
        try:
            colabkit.gpus()
        except colabkit.GpuError as exc:
            print(type(exc).__name__); print(exc.message); print(exc.hint)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    kind, message, hint = out.stdout.splitlines()
    assert kind == "GpuError"
    assert message == (
        f"The `pynvml` module at {shadow / '__init__.py'} is the old pynvml 11.x package, "
        "which hides NVIDIA's official NVML bindings."
    )
    assert hint.startswith("pip uninstall -y pynvml && pip install -U nvidia-ml-py, then restart the runtime")


# --- require_gpu and the fix per runtime ---------------------------------------------------------


def test_require_gpu_on_colab_gives_the_menu_path(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    with use(FakeNvml([])), pytest.raises(NoGpuError) as err:
        colabkit.require_gpu()
    assert err.value.message == "No NVIDIA GPU on this Colab runtime (NVML sees 0 GPUs)."
    assert err.value.runtime == "colab"
    assert f"In the Colab menu choose {COLAB_MENU}, then re-run the notebook from the top" in err.value.hint
    assert '"Cannot connect to GPU backend"' in err.value.hint and "usage limits" in err.value.hint
    assert "Colab Pro" in err.value.hint


def test_require_gpu_on_colab_tpu_says_tpu(monkeypatch):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    monkeypatch.setenv("COLAB_TPU_1VM", "1")
    with use(FakeNvml([], init_error=fake.NVMLError_LibraryNotFound)), pytest.raises(NoGpuError) as err:
        colabkit.require_gpu()
    assert (
        err.value.message
        == "This is a Colab TPU runtime: it has no NVIDIA GPU (NVML library libnvidia-ml.so.1 not found)."
    )
    assert COLAB_MENU in err.value.hint


def test_require_gpu_on_kaggle(monkeypatch):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    with use(FakeNvml([], init_error=fake.NVMLError_DriverNotLoaded)), pytest.raises(NoGpuError) as err:
        colabkit.require_gpu()
    assert err.value.message == "No NVIDIA GPU in this Kaggle notebook (NVIDIA driver not loaded)."
    assert err.value.runtime == "kaggle"
    assert err.value.hint.startswith("In the notebook editor open Settings → Accelerator → GPU T4 x2")
    assert "phone-verified" in err.value.hint


def test_require_gpu_elsewhere_points_at_the_driver():
    with use(FakeNvml([], init_error=fake.NVMLError_DriverNotLoaded)), pytest.raises(NoGpuError) as err:
        colabkit.require_gpu()
    assert err.value.runtime == "terminal"
    assert err.value.hint.startswith(
        "Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it"
    )


def test_require_gpu_picks_by_memory_and_name():
    with use(FakeNvml([t4(), a100()])):
        assert colabkit.require_gpu().name == "Tesla T4"
        assert colabkit.require_gpu(min_memory_gib=15).name == "Tesla T4"
        assert colabkit.require_gpu(min_memory_gib=16).index == 1
        assert colabkit.require_gpu(name="a100").index == 1
        with pytest.raises(NoGpuError) as err:
            colabkit.require_gpu(min_memory_gib=80)
        assert err.value.message == (
            "No GPU with at least 80 GiB of memory (min_memory_gib=80): "
            "found Tesla T4 (15.0 GiB), NVIDIA A100-SXM4-40GB (40.0 GiB)."
        )
        assert err.value.hint.startswith("Lower min_memory_gib (and the batch size)")
        with pytest.raises(NoGpuError) as err:
            colabkit.require_gpu(name="H100")
        assert err.value.message == "No GPU named 'H100' here: found Tesla T4, NVIDIA A100-SXM4-40GB."
        assert "drop name=" in err.value.hint
        with pytest.raises(NoGpuError, match="found Tesla T4 \\(15.0 GiB\\)"):
            colabkit.require_gpu(min_memory_gib=20, name="T4")


# --- the sampler's source ------------------------------------------------------------------------


def test_source_reads_scripted_values_exactly():
    device = t4(used=[1 * GIB, 3 * GIB, 2 * GIB], util=55, temp=66, power_mw=70_250)
    with use(FakeNvml([device])):
        src = _nvml.source()
        assert src is _nvml.source()
        assert src.device_count() == 1
        readings = [src.read(0) for _ in range(4)]
    assert [r.used for r in readings] == [1 * GIB, 3 * GIB, 2 * GIB, 2 * GIB]
    assert readings[0] == _nvml.DeviceReading(used=1 * GIB, total=T4_TOTAL, util=55, temp=66, power_w=70.25)


def test_source_probes_never_raise():
    lib = FakeNvml([t4(fail={"nvmlDeviceGetHandleByIndex": fake.NVMLError_GpuIsLost})])
    with use(lib):
        src = _nvml.source()
        assert src.read(0) == _nvml.DeviceReading(None, None, None, None, None)
        assert src.read(7) == _nvml.DeviceReading(None, None, None, None, None)
        assert src.processes(0) == []
    with use(FakeNvml([t4()], init_error=fake.NVMLError_Unknown)):
        assert _nvml.source().device_count() == 0
        assert _nvml.source().read(0).used is None


def test_processes_merge_compute_and_graphics():
    device = t4(compute=[(101, 2 * GIB), (102, None)], graphics=[(101, 1 * GIB), (103, 5 * MIB)])
    with use(FakeNvml([device])):
        assert sorted(_nvml.source().processes(0)) == [(101, 2 * GIB), (102, None), (103, 5 * MIB)]


def test_source_lists_each_scripted_process_of_each_gpu():
    first = t4(compute=[(101, 2 * GIB), (102, None)])
    second = a100(compute=[(201, 30 * GIB)], graphics=[(202, 64 * MIB)])
    with use(FakeNvml([first, second, t4()])):
        src = _nvml.source()
        assert src.processes(0) == [(101, 2 * GIB), (102, None)]
        assert src.processes(1) == [(201, 30 * GIB), (202, 64 * MIB)]
        assert src.processes(2) == []


def test_process_list_falls_back_on_library_mismatch():
    mismatch = fake.error("NVMLLibraryMismatchError")
    device = t4(compute=[(101, 2 * GIB)], fail={"nvmlDeviceGetComputeRunningProcesses": mismatch})
    lib = FakeNvml([device])
    with use(lib):
        assert _nvml.source().processes(0) == [(101, 2 * GIB)]
    assert "nvmlDeviceGetComputeRunningProcesses_v2" in lib.calls


def test_gpu_processes_names_real_commands():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        device = t4(compute=[(child.pid, 3 * GIB), (2**22 + 17, None)])
        with use(FakeNvml([t4(), device])):
            procs = _gpu.gpu_processes()
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert procs == [
        _gpu.GpuProcess(
            gpu_index=1,
            pid=child.pid,
            used_bytes=3 * GIB,
            command=f"{sys.executable} -c import sys; sys.stdin.read()",
        ),
        _gpu.GpuProcess(gpu_index=1, pid=2**22 + 17, used_bytes=None, command=None),
    ]
    assert repr(procs[1]) == "GpuProcess(gpu=1, pid=4194321, used=n/a, command='n/a')"


# --- the real machine ----------------------------------------------------------------------------


def _nvml_library_loads() -> bool:
    """Whether libnvidia-ml.so.1 loads here, as nvidia-ml-py loads it: decides which no-driver error is right."""
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@NO_DRIVER
def test_real_no_driver_path():
    assert colabkit.gpus() == []
    assert _nvml.source().device_count() == 0
    assert _gpu.gpu_processes() == []
    with pytest.raises(NoGpuError) as err:
        colabkit.require_gpu()
    # no library: nvmlInit cannot even load it; the library without its kernel module: driver not loaded
    if _nvml_library_loads():
        reason, cause = "NVIDIA driver not loaded", pynvml.NVMLError_DriverNotLoaded
    else:
        reason, cause = "NVML library libnvidia-ml.so.1 not found", pynvml.NVMLError_LibraryNotFound
    assert err.value.message == f"No NVIDIA GPU found ({reason})."
    assert err.value.reason == reason
    assert "`nvidia-smi`" in err.value.hint
    assert type(err.value.__cause__) is cause


@pytest.mark.gpu
def test_gpus_match_nvidia_smi():
    query = "index,name,uuid,memory.total,driver_version"
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines()]
    found = colabkit.gpus()
    assert len(found) == len(rows)
    for info, (index, name, uuid, total_mib, driver) in zip(found, rows, strict=True):
        assert (info.index, info.name, info.uuid, info.driver_version) == (int(index), name, uuid, driver)
        assert info.memory_total // MIB == int(total_mib)
        assert info.memory_used is not None and 0 <= info.memory_used <= info.memory_total
        assert info.cuda_driver_version and info.compute_capability
    # the first GPU, read again: its identity is the same, its live readings (memory used, power) may differ
    chosen = colabkit.require_gpu()
    assert (chosen.index, chosen.uuid, chosen.name, chosen.memory_total) == (
        found[0].index,
        found[0].uuid,
        found[0].name,
        found[0].memory_total,
    )


@pytest.mark.gpu
def test_real_source_reads():
    src = _nvml.source()
    assert src.device_count() >= 1
    reading = src.read(0)
    assert reading.total and reading.used is not None and reading.used <= reading.total


def _nvidia_smi_compute_pids() -> set[int]:
    out = subprocess.run(
        ["nvidia-smi", "-i", "0", "--query-compute-apps=pid", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return {int(line) for line in out.split() if line.isdigit()}


@pytest.mark.gpu
def test_real_source_lists_the_processes_nvidia_smi_lists():
    # processes() answers [] on any NVML failure: compare with nvidia-smi, not with "is a list"
    before = _nvidia_smi_compute_pids()
    pids = [pid for pid, _ in _nvml.source().processes(0)]
    after = _nvidia_smi_compute_pids()
    assert len(pids) == len(set(pids))  # one entry per process
    assert before & after <= set(pids)  # every process there before and after the read is listed


# --- torch, checked in a child process -----------------------------------------------------------


def _fake_torch(
    root: Path, *, version="2.5.1+cu124", cuda="'12.4'", available="True", extra="", gpu=None, op=""
) -> None:
    """A fake ``torch`` package; with ``gpu=(capability, arch_list)`` it can also run the probe's one CUDA
    operation (``op`` is a statement run first in it, e.g. a raise)."""
    pkg = root / "torch"
    (pkg / "cuda").mkdir(parents=True)
    tensors = ""
    if gpu is not None:
        tensors = textwrap.dedent(f"""
            float32 = "float32"
            class _Tensor:
                def __init__(self, values):
                    self.values = values
                def __mul__(self, k):
                    return _Tensor([v * k for v in self.values])
                def sum(self):
                    return _Tensor([float(sum(self.values))])
                def item(self):
                    return self.values[0]
            def arange(n, device=None, dtype=None):
                {op or "pass"}
                return _Tensor(list(range(n)))
        """)
    (pkg / "__init__.py").write_text(f"{extra}\n__version__ = {version!r}\n{tensors}\nfrom . import version, cuda\n")
    (pkg / "version.py").write_text(f"cuda = {cuda}\n")
    gpu_calls = ""
    if gpu is not None:
        gpu_calls = (
            f"def get_device_capability(i=0):\n    return {tuple(gpu[0])!r}\n\n"
            f"def get_arch_list():\n    return {list(gpu[1])!r}\n\ndef synchronize():\n    pass\n"
        )
    (pkg / "cuda" / "__init__.py").write_text(
        f"def is_available():\n    return {available}\n\ndef device_count():\n    return 1 if {available} else 0\n"
        + gpu_calls
    )


@pytest.fixture
def torch_dir(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    return root


def test_no_torch_no_check():
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here")
    assert _torch.torch_status() is None
    with use(FakeNvml([t4()])):
        assert _gpu.verify_torch() is None


def test_torch_that_fits_the_driver(torch_dir):
    _fake_torch(torch_dir, version="2.3.0+cu121", cuda="'12.1'")
    with use(FakeNvml([t4()])):
        status = colabkit.require_gpu(check_torch=True) and _gpu.verify_torch()
    assert status == _torch.TorchStatus(version="2.3.0+cu121", cuda="12.1", available=True, device_count=1)
    assert repr(status) == "TorchStatus(torch 2.3.0+cu121 (CUDA 12.1), sees the GPU)"
    assert "torch" not in sys.modules


def test_cpu_only_torch_is_a_mismatch(torch_dir):
    _fake_torch(torch_dir, version="2.3.0+cpu", cuda="None", available="False")
    with use(FakeNvml([t4()])), pytest.raises(CudaMismatchError) as err:
        colabkit.require_gpu(check_torch=True)
    assert err.value.message == "PyTorch 2.3.0+cpu is a CPU-only build: it cannot use the Tesla T4."
    assert err.value.hint.startswith(
        "Install the PyTorch build for CUDA 12.4 (or older) from pytorch.org's install selector"
    )
    assert (err.value.torch_version, err.value.torch_cuda, err.value.driver_cuda) == (
        "2.3.0+cpu",
        None,
        "12.4",
    )


@pytest.mark.parametrize(("cuda", "available"), [("'12.6'", "False"), ("'13.0'", "True")])
def test_torch_built_for_newer_cuda_than_driver(torch_dir, cuda, available):
    _fake_torch(torch_dir, version="2.9.0", cuda=cuda, available=available)
    with use(FakeNvml([t4()])), pytest.raises(CudaMismatchError) as err:
        _gpu.verify_torch()
    built = cuda.strip("'")
    assert err.value.message == (
        f"PyTorch 2.9.0 is built for CUDA {built}, newer than the CUDA 12.4 the NVIDIA driver 550.54.15 supports."
    )
    assert "the PyTorch build for CUDA 12.4 (or older)" in err.value.hint
    assert err.value.hint.endswith("Or upgrade the NVIDIA driver.")
    assert err.value.torch_cuda == built


def test_newer_minor_cuda_that_works_is_accepted(torch_dir):
    _fake_torch(torch_dir, version="2.7.0", cuda="'12.6'", available="True")
    with use(FakeNvml([t4()])):
        assert _gpu.verify_torch().cuda == "12.6"


def test_torch_that_sees_no_gpu(torch_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    _fake_torch(torch_dir, version="2.3.0", cuda="'12.1'", available="False")
    with use(FakeNvml([t4()])), pytest.raises(GpuError) as err:
        _gpu.verify_torch()
    assert err.value.message == "PyTorch 2.3.0 (CUDA 12.1) sees no GPU although NVML sees the Tesla T4."
    assert "CUDA_VISIBLE_DEVICES is '': unset it or list the GPU." in err.value.hint


def test_torch_probe_failures_are_reported_not_raised(torch_dir):
    _fake_torch(torch_dir, extra="raise ImportError('libcudart.so.12: cannot open shared object file')")
    status = _torch.torch_status()
    assert status.version is None
    assert status.error == "import torch failed: ImportError: libcudart.so.12: cannot open shared object file"
    with use(FakeNvml([t4()])):
        assert _gpu.verify_torch() == status


def test_torch_probe_times_out(torch_dir):
    _fake_torch(torch_dir, extra="import time; time.sleep(30)")
    status = _torch.torch_status(timeout=1)
    assert status == _torch.TorchStatus(None, None, None, error="the torch check timed out after 1 s")


def test_fake_error_texts_match_nvidia_ml_py():
    real = pynvml.NVMLError._errcode_to_string
    assert real, "nvidia-ml-py no longer has its offline error table: check the fake by hand"
    for code, text in real.items():
        assert str(fake.NVMLError(code)) == text, code


def test_records_render_escaped_html():
    proc = _gpu.GpuProcess(0, 42, 3 * GIB, "python <train>.py")
    assert proc._repr_html_() == "<code>GPU 0: pid 42, 3.0 GiB, python &lt;train&gt;.py</code>"
    status = _torch.TorchStatus("2.5.1", None, False)
    assert status._repr_html_() == "<code>torch 2.5.1 (CPU-only build), sees no GPU</code>"


# --- one real CUDA operation, and the GPU code the build carries --------------------------------------------

CU128_ARCHS = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
CU124_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def p100(**kw) -> FakeDevice:
    return FakeDevice(name="Tesla P100-PCIE-16GB", total=16 * GIB, cc=(6, 0), **kw)


def test_a_build_without_kernels_for_the_gpu_is_a_mismatch(torch_dir):
    # Kaggle's P100 with a CUDA 12.8 build: is_available() is True, the first kernel fails
    _fake_torch(torch_dir, version="2.8.0+cu128", cuda="'12.8'", gpu=((6, 0), CU128_ARCHS),
                op="raise RuntimeError('CUDA error: no kernel image is available for execution on the device\\n"
                   "CUDA kernel errors might be asynchronously reported')")  # fmt: skip
    with use(FakeNvml([p100()], driver="570.124.06", cuda=12080)), pytest.raises(CudaMismatchError) as err:
        colabkit.require_gpu(check_torch=True)
    assert err.value.message == (
        "PyTorch 2.8.0+cu128 has no GPU code for the Tesla P100-PCIE-16GB (sm_60): it is built for sm_70, sm_75, "
        "sm_80, sm_86, sm_90, sm_100, sm_120; its first CUDA operation failed: RuntimeError: CUDA error: no kernel "
        "image is available for execution on the device"
    )
    assert err.value.hint.startswith("Install a PyTorch build whose torch.cuda.get_arch_list() lists sm_60")
    assert "https://download.pytorch.org/whl/cu126" in err.value.hint
    assert err.value.hint.endswith("On Kaggle, choose the T4 instead: Settings → Accelerator → GPU T4 x2.")
    assert "torch" not in sys.modules  # asked in a child: no CUDA context here


def test_no_kernel_image_is_a_mismatch_even_when_the_arch_list_looks_right(torch_dir):
    _fake_torch(torch_dir, version="2.8.0", cuda="'12.8'", gpu=((7, 5), ["sm_75"]),
                op="raise RuntimeError('CUDA error: no kernel image is available for execution on the device')")  # fmt: skip
    with use(FakeNvml([t4()])), pytest.raises(CudaMismatchError, match=r"no GPU code for the Tesla T4 \(sm_75\)"):
        _gpu.verify_torch()


def test_another_failure_of_the_first_operation_is_a_gpu_error(torch_dir):
    _fake_torch(torch_dir, gpu=((7, 5), CU124_ARCHS), op="raise RuntimeError('CUDA error: unspecified launch failure')")
    with use(FakeNvml([t4()])), pytest.raises(GpuError) as err:
        _gpu.verify_torch()
    assert not isinstance(err.value, CudaMismatchError)
    assert err.value.message == (
        "PyTorch 2.5.1+cu124 sees the Tesla T4, but its first CUDA operation failed: "
        "RuntimeError: CUDA error: unspecified launch failure"
    )


def test_a_t4_runs_the_operation_and_is_told_fp16_over_bf16(torch_dir):
    _fake_torch(torch_dir, gpu=((7, 5), CU124_ARCHS))
    with use(FakeNvml([t4()])):
        status = _gpu.verify_torch()
    assert (status.op_ok, status.capability, status.kernels_fit) == (True, (7, 5), True)
    assert status.describe() == "torch 2.5.1+cu124 (CUDA 12.4), sees the GPU, ran a CUDA operation on sm_75"
    assert status.precision_note == (
        "sm_75 has no native bfloat16: train with float16 autocast (torch.autocast('cuda', dtype=torch.float16) and "
        "a torch.amp.GradScaler), not bfloat16"
    )
    assert _torch.TorchStatus("2.5", "12.4", True, capability=(8, 0)).precision_note is None


def test_a_wrong_answer_from_the_gpu_is_an_error(torch_dir):
    _fake_torch(torch_dir, gpu=((7, 5), CU124_ARCHS), op="n = n - 1")
    with use(FakeNvml([t4()])), pytest.raises(GpuError, match="2 \\* arange\\(16\\) summed to 210.0 on the GPU, not 240"):
        _gpu.verify_torch()


@pytest.mark.parametrize(
    ("cc", "archs", "runs"),
    [
        ((6, 0), CU128_ARCHS, False),
        ((6, 1), CU124_ARCHS, True),  # sm_60 code runs on sm_61
        ((7, 5), ["sm_70"], True),
        ((7, 0), ["sm_75"], False),  # code for a newer minor does not run on an older one
        ((8, 9), ["sm_80", "sm_86"], True),
        ((9, 0), ["sm_90a"], True),
        ((10, 0), ["sm_90a"], False),  # arch-specific code runs on its own GPU only
        ((12, 0), ["sm_90", "compute_90"], True),  # PTX is compiled by the driver for newer GPUs
        ((8, 0), ["compute_86"], False),
    ],
)
def test_arch_supported(cc, archs, runs):
    assert _torch.arch_supported(cc, archs) is runs
