"""``colabkit demo``: a full setup + training run on a sample project in the local Drive stand-in (``train.py`` here)."""

from __future__ import annotations

import shlex
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


def demo(
    *, epochs: int = 3, steps: int = 200, gpu: str | bool = "prefer", interval: float = 0.5, surface: str = "api"
) -> RunResult:
    """Create the sample project in the local Drive stand-in, then ``setup()`` and ``run()`` it.

    Args:
        epochs: Epochs for the sample script.
        steps: Steps per epoch.
        gpu: As in ``setup``: ``"prefer"`` trains on the CPU with a warning when there is no GPU.
        interval: Seconds between GPU samples.
        surface: ``"api"`` or ``"cli"``: how the next steps it prints are spelled.

    Returns:
        The ``RunResult`` of the training run; its log lives under ``<stand-in>/MyDrive/colabkit-demo/runs/``.

    Examples:
        >>> from colabkit._demo import demo; demo(epochs=1)
        RunResult(status='finished', returncode=0, ...)
    """
    from colabkit._display import note
    from colabkit._drive import mount
    from colabkit._run import run
    from colabkit._session import setup

    root = mount("local").root
    script = _install_sample(root / DEMO_PROJECT)
    setup(DEMO_PROJECT, gpu=gpu, mount="local", install=False)
    result = run("train.py", "--epochs", str(epochs), "--steps", str(steps), interval=interval)
    note(next_steps(script, result.log_dir, surface))
    return result


def next_steps(script: Path, run_dir: Path, surface: str = "api") -> str:
    """What to do after the demo: where its files are, how to list the runs, how to train your own model."""
    project = script.parent
    if surface == "cli":
        # from the project's folder, so that the run lands in its runs/ (where `colabkit runs` looks)
        runs, again = f"colabkit runs {shlex.quote(str(project))}", "colabkit demo"
        own = f"cd {shlex.quote(str(project))} && colabkit run {script.name}"
    else:
        runs, again, own = f"colabkit.runs({str(project)!r})", "the demo", f"colabkit.run({str(script)!r})"
    return (
        "\nNext steps:\n"
        f"  this run's log, metrics.csv and summary.json are in {run_dir}\n"
        f"  list the project's runs: {runs}\n"
        f"  train your own model: edit {script} (your edits are kept when you run {again} again), then {own}"
    )
