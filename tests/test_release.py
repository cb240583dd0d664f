"""Publishing is one step: the wheel builds, holds what it must, installs into a fresh venv and runs; the
quickstart's install cell installs an uploaded wheel, or says what to do when there is none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import ROOT

import colabkit

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel that `python3 -m pip wheel --no-deps -w dist .` builds from this checkout."""
    dist = tmp_path_factory.mktemp("dist")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = dist.glob("*.whl")
    return built


def _fresh_venv(folder: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(folder)
    return folder / "bin" / "python"


def test_the_wheel_holds_the_package_its_sample_and_the_metadata_an_index_needs(wheel):
    assert wheel.name == f"colabkit_gpu-{colabkit.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = Parser().parsestr(zf.read(f"colabkit_gpu-{colabkit.__version__}.dist-info/METADATA").decode())
        entry_points = zf.read(f"colabkit_gpu-{colabkit.__version__}.dist-info/entry_points.txt").decode()
    assert {"colabkit/__init__.py", "colabkit/errors.py", "colabkit/_child.py", "colabkit/_demo/train.py"} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]
    assert (meta["Name"], meta["Version"], meta["License-Expression"]) == ("colabkit-gpu", colabkit.__version__, "Apache-2.0")
    assert meta["Requires-Python"] == ">=3.10" and meta["Description-Content-Type"] == "text/markdown"
    assert sorted(r.split(";")[0] for r in meta.get_all("Requires-Dist") if "extra ==" not in r) == [
        "nvidia-ml-py>=12.535", "psutil>=5.9", "tqdm>=4.60",
    ]  # fmt: skip
    assert "colabkit = colabkit.cli:main" in entry_points
    assert meta.get_payload().startswith("# colabkit")  # the README is the project's description


def test_the_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    check = subprocess.run(
        [str(python), "-c", "import colabkit, sys; print(colabkit.__version__, colabkit.__file__.startswith(sys.prefix))"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert check.stdout.split() == [colabkit.__version__, "True"], check.stderr
    command = subprocess.run([str(tmp_path / "venv" / "bin" / "colabkit"), "--version"], capture_output=True, text=True, env=env)
    assert command.stdout == f"colabkit {colabkit.__version__}\n", command.stderr


def _install_cell() -> str:
    nb = json.loads((ROOT / "notebooks" / "quickstart.ipynb").read_text())
    (cell,) = [c for c in nb["cells"] if c["cell_type"] == "code" and "WHEEL_FOLDERS" in "".join(c["source"])]
    return "".join(cell["source"])


def _run_cell(python: Path, folders: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    code = _install_cell()
    assert 'WHEEL_FOLDERS = ["/content", "/content/drive/MyDrive"]' in code
    code = code.replace('WHEEL_FOLDERS = ["/content", "/content/drive/MyDrive"]', f"WHEEL_FOLDERS = {[str(f) for f in folders]!r}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PIP_NO_DEPS="1", PIP_NO_INDEX="1")  # Colab has psutil, tqdm and nvidia-ml-py already
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, cwd=cwd)


def test_the_install_cell_says_what_to_do_when_no_wheel_was_uploaded(tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    empty = tmp_path / "content"
    empty.mkdir()
    out = _run_cell(python, [empty, tmp_path / "not-mounted"], tmp_path)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == (
        f"No colabkit wheel found in {empty} or {tmp_path / 'not-mounted'}: upload colabkit_gpu-<version>-py3-none-any.whl "
        "with the Files pane (folder icon, left), then run this cell again.\n"
    )


def test_the_install_cell_installs_the_uploaded_wheel(wheel, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    content = tmp_path / "content"
    content.mkdir()
    (content / wheel.name).write_bytes(wheel.read_bytes())
    out = _run_cell(python, [content], tmp_path)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [f"installed {wheel.name}", f"colabkit {colabkit.__version__}"]
