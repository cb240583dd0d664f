"""``import colabkit`` stays light, and every public name resolves to the public object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import colabkit

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
    code = f"import colabkit.gpu, colabkit.report, json, sys; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
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
    import importlib

    for name, module_name in colabkit._NAMES.items():
        module = importlib.import_module(f"colabkit.{module_name}")
        assert name in module.__all__, f"colabkit.{module_name}.__all__ lacks {name}"


def test_public_types_read_colabkit_dot_name():
    assert colabkit.GpuInfo.__module__ == "colabkit"
    assert repr(colabkit.NoGpuError).startswith("<class 'colabkit.NoGpuError'")


def test_submodules_do_not_shadow_public_calls():
    names = list(colabkit._NAMES)
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")
    code = f"""
import importlib, json, types, colabkit
early = {{n: getattr(colabkit, n) for n in {names!r}[: len({names!r}) // 2]}}
for m in {modules!r}:
    importlib.import_module("colabkit." + m)
bad = [n for n in {names!r} if isinstance(getattr(colabkit, n), types.ModuleType)]
print(json.dumps(bad))
"""
    shadowed = json.loads(run_python(code))
    assert shadowed == [], f"a submodule named like a public name replaces it: {shadowed}"
    for name in ("setup", "gpus", "mount", "project", "run", "monitor", "info", "doctor", "stage", "runs"):
        assert callable(getattr(colabkit, name)), name


def test_cli_help_works_without_gpu():
    out = subprocess.run(
        [sys.executable, "-m", "colabkit", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("usage: colabkit")
