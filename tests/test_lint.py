"""The linter holds the foreign libraries to one home each: pynvml in _nvml.py, google.colab in _colab.py, psutil in _procs.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

pytest.importorskip("ruff")


def _ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_is_clean():
    out = _ruff("check", "--output-format", "concise", "colabkit", "tests", "bench", "examples")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("module", "line", "allowed_in"),
    [
        ("colabkit/_run.py", "import pynvml\n", "colabkit/_nvml.py"),
        ("colabkit/_drive.py", "from google.colab import drive\n", "colabkit/_colab.py"),
        ("colabkit/_monitor.py", "import psutil\n", "colabkit/_procs.py"),
        ("colabkit/_secrets.py", "from kaggle_secrets import UserSecretsClient\n", "colabkit/_kaggle.py"),
    ],
)
def test_foreign_libraries_have_one_home(module, line, allowed_in):
    banned = _ruff(
        "check", "--output-format", "concise", "--stdin-filename", module, "-", stdin=line + "\nprint(1)\n"
    )
    assert banned.returncode == 1 and "TID251" in banned.stdout, banned.stdout
    allowed = _ruff(
        "check",
        "--output-format",
        "concise",
        "--select",
        "TID251",
        "--stdin-filename",
        allowed_in,
        "-",
        stdin=line,
    )
    assert allowed.returncode == 0, allowed.stdout
