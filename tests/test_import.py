"""``import colabkit`` stays light, every public name resolves to the public object, and 0.1's module names still work."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from fakes.nvml import GIB, FakeDevice, FakeNvml

import colabkit
from colabkit import _compat, _nvml

PACKAGE = Path(colabkit.__file__).resolve().parent
HEAVY = ("pynvml", "psutil", "tqdm", "IPython", "ipywidgets", "torch", "numpy", "matplotlib")


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_loads_no_heavy_module():
    loaded = json.loads(
        run_python(
            f"import colabkit, json, sys; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
        )
    )
    assert loaded == []


def test_gpu_and_report_modules_import_light():
    code = (
        "import colabkit._nvml, colabkit._gpu, colabkit._torch, colabkit._report, json, sys; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert json.loads(run_python(code)) == []


def test_every_public_name_resolves():
    names = list(colabkit._NAMES)
    code = f"""
import colabkit, json
bad = []
for name in {names!r}:
    try:
        value = getattr(colabkit, name)
    except Exception as exc:
        bad.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
print(json.dumps(bad))
"""
    assert json.loads(run_python(code)) == []


def test_each_public_name_is_exported_by_its_module():
    for name, module_name in colabkit._NAMES.items():
        assert module_name.startswith("_") or module_name == "errors", f"{name} lives in a public module"
        module = importlib.import_module(f"colabkit.{module_name}")
        assert name in module.__all__, f"colabkit.{module_name}.__all__ lacks {name}"
        assert getattr(colabkit, name) is getattr(module, name), (
            f"colabkit.{name} is not {module_name}.{name}"
        )
    assert colabkit.__all__ == ["__version__", *colabkit._NAMES]


def test_public_types_read_colabkit_dot_name():
    assert colabkit.GpuInfo.__module__ == "colabkit"
    assert repr(colabkit.NoGpuError).startswith("<class 'colabkit.NoGpuError'")


def test_submodules_do_not_shadow_public_calls():
    names = list(colabkit._NAMES)
    # every module and package of colabkit, and every 0.1 module name (a deprecated alias now)
    modules = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]) if m.name != "__main__")
    modules += sorted(colabkit._OLD_MODULES)
    assert "_demo" in modules and "gpu" in modules
    assert not colabkit._OLD_MODULES & set(names), "a 0.1 module name is also a public name"
    code = f"""
import importlib, json, types, colabkit
early = {{n: getattr(colabkit, n) for n in {names!r}[: len({names!r}) // 2]}}
for m in {modules!r}:
    importlib.import_module("colabkit." + m)
bad = [n for n in {names!r} if isinstance(getattr(colabkit, n), types.ModuleType)]
bad += [n for n, v in early.items() if getattr(colabkit, n) is not v]
print(json.dumps(bad))
"""
    shadowed = json.loads(run_python(code))
    assert shadowed == [], f"a submodule named like a public name replaces it: {shadowed}"
    for name in ("setup", "gpus", "mount", "project", "run", "monitor", "info", "doctor", "stage", "runs"):
        assert callable(getattr(colabkit, name)), name


# --- colabkit 0.1's module names ------------------------------------------------------------------

# (0.1 module, name on it, its top-level spelling now)
DEPRECATED = [
    ("checkpoint", "load", "colabkit.load"),
    ("projects", "current", "colabkit.current_project"),
    ("drive", "find_mount", "colabkit.find_mount"),
    ("gpu", "gpu_processes", "colabkit.gpu_processes"),
    ("gpu", "verify_torch", "colabkit.verify_torch"),
    ("runtime", "detect", "colabkit.detect_runtime"),
]


def _one_deprecation(caught: pytest.WarningsRecorder, old: str, name: str, new: str) -> None:
    (warning,) = caught.list
    assert warning.category is DeprecationWarning
    text = str(warning.message)
    assert f"colabkit.{old}.{name}" in text, text
    assert re.search(rf"{re.escape(new)}(?![\w.])", text), f"{text!r} does not name {new}"


@pytest.mark.parametrize(("old", "name", "new"), DEPRECATED)
def test_old_names_still_work_and_name_the_new_spelling(old, name, new):
    public = getattr(colabkit, new.removeprefix("colabkit."))
    module = getattr(colabkit, old)
    assert isinstance(module, types.ModuleType) and module is sys.modules[f"colabkit.{old}"]
    with pytest.warns(DeprecationWarning) as caught:
        value = getattr(module, name)  # colabkit.checkpoint.load
    assert value is public
    _one_deprecation(caught, old, name, new)
    namespace: dict[str, object] = {}
    with pytest.warns(DeprecationWarning) as caught:
        exec(f"from colabkit.{old} import {name}", namespace)  # the statement 0.1 code has
    assert namespace[name] is public
    _one_deprecation(caught, old, name, new)


def test_old_names_answer_as_the_new_ones(tmp_path, monkeypatch):
    root = tmp_path / "root"  # a machine whose /proc/uptime says 1h02m05s
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "uptime").write_text("3725.5 7000.0\n")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(root))
    saved = colabkit.save({"step": 3}, tmp_path / "checkpoints")
    with pytest.warns(DeprecationWarning, match=r"use colabkit\.load$"):
        assert colabkit.checkpoint.load(saved) == {"step": 3}
    with pytest.warns(DeprecationWarning, match=r"use colabkit\.current_project$"):
        assert colabkit.projects.current() is None
    with pytest.warns(DeprecationWarning, match=r"use colabkit\.find_mount$"):
        assert colabkit.drive.find_mount() is None  # nothing mounted, no stand-in folder yet
    with pytest.warns(DeprecationWarning, match=r"use colabkit\.detect_runtime$"):
        assert colabkit.runtime.detect() == colabkit.Runtime(kind="terminal", uptime_s=3725.5)
    lib = FakeNvml([FakeDevice(compute=[(2**22 + 17, 3 * GIB)])])
    with _nvml._use_library(lib):
        with pytest.warns(DeprecationWarning, match=r"use colabkit\.gpu_processes$"):
            procs = colabkit.gpu.gpu_processes()
        assert procs == [colabkit.GpuProcess(gpu_index=0, pid=2**22 + 17, used_bytes=3 * GIB, command=None)]
        with pytest.warns(DeprecationWarning, match=r"use colabkit\.verify_torch$"):
            assert colabkit.gpu.verify_torch(timeout=30) == colabkit.verify_torch(timeout=30)


def test_compat_knows_every_old_module_name():
    assert set(_compat.OLD_MODULES) == colabkit._OLD_MODULES
    for old, target in _compat.OLD_MODULES.items():
        assert target.startswith("_"), old
        importlib.import_module(f"colabkit.{target}")


def test_cli_help_works_without_gpu():
    out = subprocess.run(
        [sys.executable, "-m", "colabkit", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("usage: colabkit")
