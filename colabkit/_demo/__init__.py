"""``colabkit demo``: a full setup + training run on a sample project in the local Drive stand-in (``train.py`` here)."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from colabkit._result import RunResult

__all__ = ["DEMO_PROJECT", "demo"]

DEMO_PROJECT = "colabkit-demo"


def _install_sample(folder: Path) -> Path:
    """Copy the sample training script into ``folder`` (kept if the user edited it)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "train.py"
    if not script.exists():
        with resources.as_file(resources.files("colabkit._demo") / "train.py") as src:
            shutil.copyfile(src, script)
    readme = folder / "README.txt"
    if not readme.exists():
        readme.write_text(
            "Sample project made by `colabkit demo`.\n"
            "train.py fits y = 3x + 2 with torch (GPU when there is one), numpy, or plain Python.\n"
            "Each run keeps its log, metrics.csv and summary.json under runs/.\n"
        )
    return script


def demo(*, epochs: int = 3, steps: int = 200, gpu: str | bool = "prefer", interval: float = 0.5) -> RunResult:
    """Create the sample project in the local Drive stand-in, then ``setup()`` and ``run()`` it.

    Args:
        epochs: Epochs for the sample script.
        steps: Steps per epoch.
        gpu: As in ``setup``: ``"prefer"`` trains on the CPU with a warning when there is no GPU.
        interval: Seconds between GPU samples.

    Returns:
        The ``RunResult`` of the training run; its log lives under ``<stand-in>/MyDrive/colabkit-demo/runs/``.

    Examples:
        >>> from colabkit._demo import demo; demo(epochs=1)
        RunResult(status='finished', returncode=0, ...)
    """
    from colabkit._drive import mount
    from colabkit._run import run
    from colabkit._session import setup

    root = mount("local").root
    _install_sample(root / DEMO_PROJECT)
    setup(DEMO_PROJECT, gpu=gpu, mount="local", install=False)
    return run("train.py", "--epochs", str(epochs), "--steps", str(steps), interval=interval)
