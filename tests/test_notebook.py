"""notebooks/quickstart.ipynb executed in a real Jupyter kernel (off Colab: the local Drive stand-in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"

SCRIPT = """\
import argparse, sys, time
from tqdm import tqdm
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()
for epoch in range(a.epochs):
    for _ in tqdm(range(20), desc=f"epoch {epoch}", file=sys.stdout, mininterval=0):
        time.sleep(0.005)
    print(f"epoch {epoch} loss {1.0 / (epoch + 1):.3f}", flush=True)
print("training done")
"""


def _outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(out["text"])
        for key in ("text/plain", "text/html"):
            if key in out.get("data", {}):
                parts.append(out["data"][key])
    return "\n".join(parts)


def test_metadata_asks_for_a_t4_gpu():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"]["accelerator"] == "GPU"
    assert nb["metadata"]["colab"]["gpuType"] == "T4"
    assert any("parameters" in c["metadata"].get("tags", []) for c in nb["cells"])


@pytest.mark.notebook
@pytest.mark.timeout(240)
def test_quickstart_runs_in_a_real_kernel(tmp_path, monkeypatch):
    drive = Path(tmp_path / "drive")
    project = drive / "MyDrive" / "test"
    project.mkdir(parents=True)
    (project / "test.py").write_text(SCRIPT)
    monkeypatch.delenv("COLABKIT_DISPLAY")  # the kernel must find out by itself that it is a notebook
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = params.source.replace('GPU = "require"', 'GPU = "prefer"')  # CI has no GPU
    assert 'GPU = "prefer"' in params.source

    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    setup_out, run_out, plot_out, runs_out = (_outputs_text(c) for c in code[2:6])
    assert "test" in setup_out
    assert "training done" in run_out and "epoch 2 loss" in run_out
    assert any("image/png" in o.get("data", {}) for o in code[4].outputs), "plot() showed no figure"
    assert "finished" in runs_out

    run_dirs = list((project / "runs").iterdir())
    assert len(run_dirs) == 1
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["returncode"] == 0
    assert "training done" in (run_dirs[0] / "output.log").read_text()
