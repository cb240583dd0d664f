"""How much ``import colabkit`` adds to interpreter start-up, in a fresh virtual environment that holds only colabkit.

A development machine's site-packages (and its ``.pth`` hooks) would hide or add cost, so this creates a
new venv without pip, copies the ``colabkit`` package into its site-packages and compiles it (as pip
does on install), and there runs
``python -c pass`` and ``python -c "import colabkit"`` interleaved (so drift hits both alike). It prints
both medians and their ratio, measured in this one run, and which modules ``import colabkit`` loaded.
Target: ratio <= 1.3.

    python3 bench/import_time.py [--runs 21]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path

TARGET = 1.3
PACKAGE = Path(__file__).resolve().parent.parent / "colabkit"


def _fresh_venv(folder: Path) -> Path:
    """A venv without pip at ``folder`` holding only a copy of colabkit; its interpreter."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    installed = Path(purelib) / "colabkit"
    shutil.copytree(PACKAGE, installed, ignore=shutil.ignore_patterns("__pycache__"))
    # as pip does on install: the bytecode is there before the first import (PYTHONDONTWRITEBYTECODE or not)
    subprocess.run([str(python), "-m", "compileall", "-q", str(installed)], check=True)
    return python


def _wall(python: Path, code: str) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", code], check=True, cwd="/")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="runs of each command (default 21)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="colabkit-import-bench-") as tmp:
        python = _fresh_venv(Path(tmp) / "venv")
        _wall(python, "import colabkit")  # compile the bytecode and warm the file cache before measuring
        loaded = subprocess.run(
            [str(python), "-c", "import sys; b = set(sys.modules); import colabkit; "
             "print(' '.join(sorted(set(sys.modules) - b)))"],
            capture_output=True, text=True, check=True, cwd="/",
        ).stdout.split()  # fmt: skip
        bare, with_colabkit = [], []
        for _ in range(args.runs):
            bare.append(_wall(python, "pass"))
            with_colabkit.append(_wall(python, "import colabkit"))
    base, ours = statistics.median(bare), statistics.median(with_colabkit)
    ratio = ours / base
    print(f"fresh venv: Python {sys.version.split()[0]} ({sysconfig.get_platform()}), only colabkit installed")
    print(f"python -c pass              median {base * 1000:7.1f} ms over {args.runs} runs")
    print(f"python -c 'import colabkit' median {ours * 1000:7.1f} ms over {args.runs} runs")
    print(f"modules import colabkit loaded: {', '.join(loaded)}")
    print(f"ratio {ratio:.2f} (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
