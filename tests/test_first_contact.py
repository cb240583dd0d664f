"""A student's first notebook, in a real Jupyter kernel (nbclient): short errors with the fix, summaries shown once.

The quickstart notebook runs as a class would run it: on a CPU runtime with ``gpu="require"`` (the most
common first mistake) and with ``gpu="prefer"``. The kernel is told it is on a Colab VM through a fake
machine root, so the fix it shows is Colab's menu path.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import ROOT, nvml_loads

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SCRIPT = "print('training done')\n"

IPYTHON7 = "IPYTHON7_PYTHON"  # a Python with IPython 7.34 and ipykernel 6 (Colab's), made by .ci/run

pytestmark = [
    pytest.mark.notebook,
    pytest.mark.timeout(240),
    pytest.mark.skipif(nvml_loads(), reason="this machine has an NVIDIA driver: no CPU runtime to show"),
]


@pytest.fixture(params=["python3", "ipython7"])
def kernel(request, tmp_path, monkeypatch) -> str:
    """The kernel the notebook runs in: this environment's, and Colab's IPython 7.34 when CI provides one."""
    if request.param == "python3":
        return "python3"
    python = os.environ.get(IPYTHON7)
    if not python:
        pytest.skip(f"no IPython 7.34 kernel: set ${IPYTHON7} to a Python that has it (.ci/run does)")
    spec = tmp_path / "jupyter" / "kernels" / "ipython7"
    spec.mkdir(parents=True)
    argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "IPython 7", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return "ipython7"


def _run(tmp_path: Path, monkeypatch, gpu: str, *, colab: bool = True, kernel: str = "python3") -> list:
    """Execute the quickstart with ``GPU = gpu`` on a faked CPU-only Colab VM (or this CPU-only machine); its code cells."""
    if colab:
        vm = tmp_path / "vm"
        (vm / "var" / "colab").mkdir(parents=True)
        (vm / "var" / "colab" / "hostname").write_text("colab-vm\n")
        (vm / "proc").symlink_to("/proc")
        monkeypatch.setenv("COLABKIT_SYSROOT", str(vm))
    monkeypatch.delenv("COLABKIT_DISPLAY")  # the kernel must find out by itself that it is a notebook
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('GPU = "require"', f'GPU = "{gpu}"')
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name=kernel, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def _errors(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "error"]


def test_a_cpu_runtime_with_gpu_require_shows_one_short_block_with_the_menu_path(tmp_path, monkeypatch, kernel):
    code = _run(tmp_path, monkeypatch, "require", kernel=kernel)
    setup_cell = next(c for c in code if "colabkit.setup(" in c.source)
    (error,) = _errors(setup_cell)
    assert error.ename == "NoGpuError"
    lines = [ANSI.sub("", line) for tb in error.traceback for line in tb.split("\n")]
    assert len(lines) <= 4, lines  # what happened, the fix, where the detail is: not a 91-line traceback
    assert lines[0] == "NoGpuError: No NVIDIA GPU on this Colab runtime (NVML library libnvidia-ml.so.1 not found)."
    assert lines[1].startswith("HINT: In the Colab menu choose Runtime → Change runtime type → T4 GPU → Save")
    assert "COLABKIT_TRACEBACK=1" in lines[-1]
    text = "\n".join(lines)
    assert "ctypes" not in text and "pynvml" not in text and "File " not in text


def test_a_name_from_the_failed_setup_cell_says_that_setup_did_not_finish(tmp_path, monkeypatch, kernel):
    code = _run(tmp_path, monkeypatch, "require", kernel=kernel)
    plot_cell = next(c for c in code if "result.plot()" in c.source)
    (error,) = _errors(plot_cell)
    assert error.ename == "NameError"
    text = ANSI.sub("", "\n".join(error.traceback))
    assert "name 'result' is not defined" in text
    assert text.rstrip().endswith(
        "colabkit: setup() did not finish: run the cell above again after the fix (NoGpuError), "
        "so names it defines are missing"
    )


def test_with_gpu_prefer_the_setup_summary_is_shown_once(tmp_path, monkeypatch, kernel):
    drive = tmp_path / "drive"
    (drive / "MyDrive" / "test").mkdir(parents=True)
    (drive / "MyDrive" / "test" / "test.py").write_text(SCRIPT)
    monkeypatch.setenv("COLABKIT_DRIVE", str(drive))
    code = _run(tmp_path, monkeypatch, "prefer", colab=False, kernel=kernel)
    setup_cell = next(c for c in code if "colabkit.setup(" in c.source)
    assert not _errors(setup_cell)
    summaries = [o for o in setup_cell.outputs if "ready" in o.get("data", {}).get("text/plain", "")]
    assert len(summaries) == 1, setup_cell.outputs


def test_a_colabkit_warning_is_one_line_note(tmp_path, monkeypatch, kernel):
    drive = tmp_path / "drive"
    (drive / "MyDrive" / "test").mkdir(parents=True)
    (drive / "MyDrive" / "test" / "test.py").write_text(SCRIPT)
    monkeypatch.setenv("COLABKIT_DRIVE", str(drive))
    code = _run(tmp_path, monkeypatch, "prefer", colab=False, kernel=kernel)
    setup_cell = next(c for c in code if "colabkit.setup(" in c.source)
    streams = "".join(o.text for o in setup_cell.outputs if o.output_type == "stream")
    notes = [line for line in streams.splitlines() if "no NVIDIA GPU found" in line]
    assert notes == [
        "colabkit: no NVIDIA GPU found: going on on the CPU (gpu='prefer'). Install the NVIDIA driver for this "
        "machine's GPU and check that `nvidia-smi` lists it; in a container, start it with GPU access "
        "(docker run --gpus all ...)."
    ]
    assert "ipykernel" not in streams and "warnings.warn" not in streams and "ColabkitWarning" not in streams
