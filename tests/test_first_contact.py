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


def test_the_cells_after_a_failed_setup_say_that_setup_did_not_finish(tmp_path, monkeypatch, kernel):
    code = _run(tmp_path, monkeypatch, "require", kernel=kernel)
    run_cell = next(c for c in code if "colabkit.run(" in c.source)
    (error,) = _errors(run_cell)
    lines = [ANSI.sub("", line) for tb in error.traceback for line in tb.split("\n")]
    assert error.ename == "ColabkitError"  # not ScriptNotFound: the project was never opened
    assert lines[0].startswith(
        "ColabkitError: setup() did not finish: run the cell above again after the fix (NoGpuError: No NVIDIA GPU"
    )
    assert lines[1].startswith("HINT: In the Colab menu choose Runtime → Change runtime type → T4 GPU → Save")
    assert lines[1].endswith("Then run the setup() cell again, and this one (run()).")
    plot_cell = next(c for c in code if "result.plot()" in c.source)
    (error,) = _errors(plot_cell)
    assert error.ename == "NameError"
    text = ANSI.sub("", "\n".join(error.traceback))
    assert "name 'result' is not defined" in text
    assert text.rstrip().endswith(
        "colabkit: setup() did not finish: run the cell above again after the fix (NoGpuError), "
        "so names it defines are missing"
    )


def _shown(cell) -> str:
    """Everything a cell shows as text: its streams, the plain text of its displays and of its result."""
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def test_with_gpu_prefer_each_summary_is_shown_once_and_the_plot_without_its_path(tmp_path, monkeypatch, kernel):
    drive = tmp_path / "drive"
    (drive / "MyDrive" / "test").mkdir(parents=True)
    (drive / "MyDrive" / "test" / "test.py").write_text(SCRIPT)
    monkeypatch.setenv("COLABKIT_DRIVE", str(drive))
    code = _run(tmp_path, monkeypatch, "prefer", colab=False, kernel=kernel)
    plot_cell = next(c for c in code if "result.plot()" in c.source)
    assert not [e for c in code for e in _errors(c) if c is not plot_cell]
    setup_cell = next(c for c in code if "colabkit.setup(" in c.source)
    summaries = [o for o in setup_cell.outputs if "ready" in o.get("data", {}).get("text/plain", "")]
    assert len(summaries) == 1, setup_cell.outputs
    run_cell = next(c for c in code if "colabkit.run(" in c.source)
    assert run_cell.source.rstrip().endswith("\nresult")  # the result as the cell's last line too
    assert _shown(run_cell).count("test.py finished (exit status 0)") == 1, run_cell.outputs
    assert not [o for o in run_cell.outputs if o.output_type == "execute_result"]
    if kernel == "ipython7":  # Colab's IPython made by .ci/run has no matplotlib: plot() says how to get it
        (error,) = _errors(plot_cell)
        assert (error.ename, error.evalue.split(":")[0]) == ("ImportError", "RunResult.plot() needs matplotlib, which is not installed")
        return
    assert [o for o in plot_cell.outputs if "image/png" in o.get("data", {})], plot_cell.outputs
    assert len(plot_cell.outputs) == 1 and "PosixPath" not in _shown(plot_cell)


FAILING = """\
def load(batch):
    raise ValueError(f"bad label 7 in batch {batch}")

print("loading data")
load(3)
"""


def test_a_failing_script_shows_its_traceback_once_and_a_short_error_without_colabkit_frames(tmp_path, monkeypatch, kernel):
    (tmp_path / "train.py").write_text(FAILING)
    monkeypatch.delenv("COLABKIT_DISPLAY")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import colabkit\ncolabkit.run('train.py', monitor=False)")]
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name=kernel, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    (cell,) = nb.cells
    (error,) = _errors(cell)
    (log,) = (tmp_path / "runs").glob("*-train/output.log")
    block = [ANSI.sub("", line) for tb in error.traceback for line in tb.split("\n")]
    assert block == [
        "RunFailed: train.py exited with exit status 1",
        f"HINT: Fix the error shown above and run again; the full output is in {log}",
        "(colabkit shows its errors short: %env COLABKIT_TRACEBACK=1 and run the cell again for the traceback)",
    ]
    shown = _shown(cell) + "\n".join(block)
    assert shown.count("Traceback (most recent call last)") == 1  # the script's own, once
    assert shown.count("ValueError: bad label 7 in batch 3") == 1
    assert 'train.py", line 2, in load' in shown and "colabkit" not in _shown(cell).replace("import colabkit", "")
    assert shown.count(str(log)) == 1 and shown.count("exit status 1") == 1


def test_a_colabkit_warning_is_one_line_note(tmp_path, monkeypatch, kernel):
    drive = tmp_path / "drive"
    (drive / "MyDrive" / "test").mkdir(parents=True)
    (drive / "MyDrive" / "test" / "test.py").write_text(SCRIPT)
    monkeypatch.setenv("COLABKIT_DRIVE", str(drive))
    code = _run(tmp_path, monkeypatch, "prefer", colab=False, kernel=kernel)
    setup_cell = next(c for c in code if "colabkit.setup(" in c.source)
    streams = "".join(o.text for o in setup_cell.outputs if o.output_type == "stream")
    notes = [line for line in streams.splitlines() if "no GPU" in line]
    assert notes == [
        "colabkit: no GPU: running on the CPU, much slower. Install the NVIDIA driver for this "
        "machine's GPU and check that `nvidia-smi` lists it; in a container, start it with GPU access "
        "(docker run --gpus all ...)."
    ]
    assert "ipykernel" not in streams and "warnings.warn" not in streams and "ColabkitWarning" not in streams


TABLES = ROOT / "tests" / "notebooks" / "tables.ipynb"


def _cell_styles(html: str) -> list[tuple[str, str]]:
    """Each table cell and caption of an HTML output, with its inline style."""
    from html.parser import HTMLParser

    found: list[tuple[str, str]] = []

    class Cells(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag in ("td", "th", "caption"):
                found.append((tag, dict(attrs).get("style") or ""))

    Cells().feed(html)
    return found


def test_the_tables_of_setup_info_doctor_and_runs_align_left_in_a_real_notebook(tmp_path, monkeypatch, kernel):
    # JupyterLab's stylesheet right-aligns td and th, Colab's output frame has its own: only inline styles hold
    # in both (checked by eye in headless Chromium; this test reads the HTML, it needs no browser)
    project = tmp_path / "drive" / "MyDrive" / "tables"
    project.mkdir(parents=True)
    (project / "train.py").write_text(SCRIPT)
    monkeypatch.setenv("COLABKIT_DRIVE", str(tmp_path / "drive"))
    monkeypatch.delenv("COLABKIT_DISPLAY")
    nb = nbformat.read(TABLES, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name=kernel, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    for call in ("setup(", "info()", "doctor()", "runs()"):
        (cell,) = [c for c in code if call in c.source]
        htmls = [o.data["text/html"] for o in cell.outputs if "<table" in o.get("data", {}).get("text/html", "")]
        assert len(htmls) == 1, (call, cell.outputs)  # one table, shown once
        cells = _cell_styles(htmls[0])
        assert len([c for c in cells if c[0] != "caption"]) >= 4, (call, htmls[0])
        assert all("text-align:left" in style for _, style in cells), (call, cells)
