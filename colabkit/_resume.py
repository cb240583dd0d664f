"""Resume that fits real scripts: the newest complete checkpoint in the layouts people use, where it is looked
for, the arguments that hand it to the script, and what the start line says about it.

Layouts, looked for in this order in one folder (the first that has a checkpoint wins):

- ``colabkit``: what ``colabkit.save()`` wrote (``ckpt-000012.pt``, named ones), through ``latest()``; a folder
  with colabkit's manifest is read only this way, so ``pretrained.pt`` beside them is never taken;
- ``hf``: Hugging Face Trainer's ``checkpoint-N/`` folders; complete means its ``trainer_state.json`` is there
  (the Trainer writes it after the weights, optimizer and RNG state), and the newest is the highest ``N``
  (``transformers.trainer_utils.get_last_checkpoint`` picks the highest ``N`` whether complete or not);
- ``lightning``: ``.ckpt`` files anywhere up to four levels down (``lightning_logs/version_0/checkpoints/
  epoch=1-step=200.ckpt``, ``last.ckpt``), the newest by modification time, ``last.ckpt`` on a tie;
- ``file``: ``ckpt.pt`` (nanoGPT), ``checkpoint.pth.tar`` (pytorch/examples), any ``*.pt``, ``*.pth``,
  ``*.pth.tar`` at the top of the folder, the newest by modification time; ``model_best.pth.tar`` and other
  ``best`` files only when nothing else is there (a copy of an older state, not the latest one).

A file counts only when it is complete: not empty, and when it is a zip archive (``torch.save`` writes one since
PyTorch 1.6, Lightning's ``.ckpt`` too), its end record is there, so a save killed half-way is skipped.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "OUTPUT_DIR_FLAGS",
    "Found",
    "Start",
    "Where",
    "asked",
    "decide",
    "find",
    "output_dir",
    "resume_tokens",
    "start_note",
    "suggest_arg",
    "unanswered",
    "where",
]

# a script's own output folder, by the names real scripts give it: HF's --output_dir, nanoGPT's --out_dir,
# Lightning's --default_root_dir (LightningCLI spells it --trainer.default_root_dir); "--name value" and "--name=value"
OUTPUT_DIR_FLAGS = (
    "--output_dir",
    "--output-dir",
    "--out_dir",
    "--out-dir",
    "--default_root_dir",
    "--trainer.default_root_dir",
)
_HF = re.compile(r"^checkpoint-(\d+)$")
_STEP_IN_NAME = re.compile(r"(?:^|[-_])step[=_-]?(\d+)")  # Lightning's "epoch=1-step=200", "step_500"
_FILE_SUFFIXES = (".pt", ".pth", ".pth.tar", ".ckpt")
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_END = b"PK\x05\x06"
_LIGHTNING_DEPTH = 4
_LAYOUT_WORDS = {
    "colabkit": "colabkit.save()",
    "hf": "Hugging Face Trainer",
    "lightning": "Lightning",
    "file": "checkpoint file",
}


@dataclass(frozen=True)
class Found:
    """A checkpoint found for resuming: ``path`` is what the script is handed (a file, or an HF folder).

    ``step`` is the training step its name or its trainer state tells (``None`` when neither does);
    ``skipped`` lists newer checkpoints that were incomplete (a save killed half-way).
    """

    path: Path
    layout: str  # "colabkit", "hf", "lightning" or "file"
    step: int | None = None
    skipped: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return self.path.name

    def describe(self) -> str:
        """``checkpoint-500 (Hugging Face Trainer, step 500)``."""
        bits = [_LAYOUT_WORDS.get(self.layout, self.layout)]
        if self.step is not None:
            bits.append(f"step {self.step:,}")
        return f"{self.name} ({', '.join(bits)})"

    @property
    def fixed_name(self) -> bool:
        """Whether the script saves under this same name each time (``ckpt.pt``, ``last.ckpt``): a fresh run
        overwrites it at its first save."""
        return self.layout in ("file", "lightning") and _STEP_IN_NAME.search(self.path.name) is None


@dataclass(frozen=True)
class Where:
    """Where checkpoints are looked for: ``path`` (absolute) and ``because`` (``"checkpoint_dir="``,
    ``"--out_dir=out"``, or ``"the default"``)."""

    path: Path
    because: str

    def describe(self) -> str:
        return f"{self.path} ({self.because})"


# -- where -----------------------------------------------------------------------------------------
def output_dir(args: Sequence[str]) -> tuple[str, str] | None:
    """The script's own output folder argument, as ``(flag, value)``; the last one given wins, as in argparse.

    Examples:
        >>> output_dir(["--model_name_or_path", "gpt2", "--output_dir", "out"])
        ('--output_dir', 'out')
        >>> output_dir(["config/train_shakespeare_char.py", "--out_dir=out-shakespeare-char"])
        ('--out_dir', 'out-shakespeare-char')
    """
    found = None
    items = list(args)
    for i, arg in enumerate(items):
        name, eq, value = arg.partition("=")
        if name not in OUTPUT_DIR_FLAGS:
            continue
        if eq:
            found = (name, value)
        elif i + 1 < len(items) and not items[i + 1].startswith("-"):
            found = (name, items[i + 1])
    return found if found is not None and found[1] else None


def where(checkpoint_dir: str | os.PathLike[str] | None, args: Sequence[str], workdir: Path) -> Where:
    """Where the script's checkpoints are: ``checkpoint_dir`` when given, else its output-folder argument
    (``--output_dir``, ``--out_dir``, ``--default_root_dir``), else ``checkpoints``; relative to ``workdir``."""
    folder, because = asked(checkpoint_dir, args)
    return Where(_absolute(workdir, folder), because)


def asked(checkpoint_dir: str | os.PathLike[str] | None, args: Sequence[str]) -> tuple[Path, str]:
    """The checkpoint folder as given (relative to the script's working folder, or absolute) and why it is that one."""
    if checkpoint_dir is not None:
        return Path(checkpoint_dir).expanduser(), "checkpoint_dir="
    flag = output_dir(args)
    if flag is not None:
        return Path(flag[1]).expanduser(), f"{flag[0]} {flag[1]}"
    return Path("checkpoints"), "the default checkpoint_dir"


def _absolute(workdir: Path, folder: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(workdir / Path(folder).expanduser()))


# -- what is there ---------------------------------------------------------------------------------
def unanswered(folder: Path) -> str | None:
    """Why the FUSE mount (Drive) holding ``folder`` cannot be asked now (dead, hung), or ``None`` when it answers
    or ``folder`` is on no FUSE mount; bounded by the mount probe's deadline."""
    from . import _mounts

    found = _mounts.mount_of(Path(os.path.abspath(folder)))
    if found is None or not found.fstype.startswith("fuse"):
        return None
    state = _mounts.health(found.point, max_age=2.0).state
    return None if state == "live" else f"the Drive at {found.point} is {state}"


def find(folder: Path) -> Found | None:
    """The newest complete checkpoint in ``folder`` in the first layout that has one, or ``None``.

    Raises:
        OSError: the folder cannot be listed for another reason than not being there (a dead Drive).
    """
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    from . import _checkpoint

    if _checkpoint.MANIFEST in names or any(_checkpoint._SEQ.match(n) for n in names):
        ours = _checkpoint.latest(folder)
        return Found(ours, "colabkit") if ours is not None else None
    for finder in (_find_hf, _find_lightning, _find_file):
        found = finder(folder, names)
        if found is not None:
            return found
    return None


def _find_hf(folder: Path, names: list[str]) -> Found | None:
    numbered = sorted(((int(m.group(1)), n) for n in names if (m := _HF.match(n))), reverse=True)
    skipped: list[Path] = []
    for step, name in numbered:
        path = folder / name
        if not path.is_dir():
            continue
        if _nonempty(path / "trainer_state.json"):
            return Found(path, "hf", step, tuple(skipped))
        skipped.append(path)
    return None


def _find_lightning(folder: Path, names: list[str]) -> Found | None:
    best: tuple[int, int, Path] | None = None
    skipped: list[tuple[int, Path]] = []
    for path in _walk(folder, names, _LIGHTNING_DEPTH):
        if not path.name.endswith(".ckpt"):
            continue
        mtime = _mtime_ns(path)
        if not _complete(path):
            skipped.append((mtime, path))
            continue
        key = (mtime, 1 if path.stem.startswith("last") else 0, path)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        return None
    path = best[2]
    newer = tuple(p for m, p in sorted(skipped) if m > best[0])
    return Found(path, "lightning", _step_in(path.name), newer)


def _find_file(folder: Path, names: list[str]) -> Found | None:
    candidates: list[tuple[int, Path]] = []
    skipped: list[tuple[int, Path]] = []
    for name in names:
        if name.startswith(".") or not name.endswith(_FILE_SUFFIXES):
            continue
        path = folder / name
        if not path.is_file():
            continue
        mtime = _mtime_ns(path)
        (candidates if _complete(path) else skipped).append((mtime, path))
    if not candidates:
        return None
    plain = [c for c in candidates if "best" not in c[1].name.lower()]
    mtime, path = max(plain or candidates, key=lambda c: (c[0], c[1].name))
    newer = tuple(p for m, p in sorted(skipped) if m > mtime)
    return Found(path, "file", _step_in(path.name), newer)


def _walk(folder: Path, names: list[str], depth: int) -> list[Path]:
    """Files under ``folder`` down to ``depth`` levels (symlinks to files included, to folders not followed)."""
    out: list[Path] = []
    todo = [(folder, names, 1)]
    while todo:
        here, entries, level = todo.pop()
        for name in entries:
            if name.startswith("."):
                continue
            path = here / name
            try:
                if path.is_file():
                    out.append(path)
                elif level < depth and path.is_dir() and not path.is_symlink():
                    todo.append((path, os.listdir(path), level + 1))
            except OSError:
                continue
    return out


def _step_in(name: str) -> int | None:
    m = _STEP_IN_NAME.search(name)
    return int(m.group(1)) if m else None


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _nonempty(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _complete(path: Path) -> bool:
    """Not empty, and a zip archive (torch.save's format) ends with its end record: a killed save has none."""
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with open(path, "rb") as f:
            if f.read(4) != _ZIP_MAGIC:
                return True  # torch's legacy pickle format, or a plain file: nothing more to check
            f.seek(max(0, size - 65536 - 22))
            return _ZIP_END in f.read()
    except OSError:
        return False


# -- handing it to the script ----------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """What a run starts from: the checkpoint found (if any), the one ``$COLABKIT_RESUME`` names (``resume=True``
    only), the arguments added to the script's, and the start line about it (``""``: nothing to say)."""

    found: Found | None
    resumed_from: Path | None
    tokens: tuple[str, ...]
    note: str


def decide(
    at: Where, *, resume: bool, resume_arg: str | Sequence[str] | None, surface: str = "api"
) -> Start:
    """Look in ``at`` and decide what the run starts from; never raises, never waits on a hung Drive (an
    unreadable folder is said)."""
    then = "starting fresh" if resume else "a checkpoint there may be overwritten"
    why = unanswered(at.path)
    try:
        if why is not None:
            raise OSError(why)
        found = find(at.path)
    except OSError as exc:
        return Start(None, None, (), f"colabkit: cannot look for checkpoints in {at.describe()} ({exc}); {then}")
    note = start_note(found, at, resume=resume, resume_arg=resume_arg, surface=surface)
    if not resume or found is None:
        return Start(found, None, (), note)
    return Start(found, found.path, tuple(resume_tokens(resume_arg, found.path)), note)


def resume_tokens(template: str | Sequence[str] | None, path: Path) -> list[str]:
    """The arguments that tell the script to resume: ``template`` with ``{path}`` (if any) filled in.

    A string is split like a shell line (``"--resume {path}"`` → two arguments, a path with spaces stays one);
    a list is taken as arguments as they are (``["fit", "--ckpt_path", "{path}"]``). A template without
    ``{path}`` (``"--init_from=resume"``) is passed as it is: the script finds the checkpoint itself.

    Examples:
        >>> resume_tokens("--resume_from_checkpoint {path}", Path("out/checkpoint-500"))
        ['--resume_from_checkpoint', 'out/checkpoint-500']
        >>> resume_tokens("--init_from=resume", Path("out/ckpt.pt"))
        ['--init_from=resume']
    """
    if template is None:
        return []
    items = shlex.split(template) if isinstance(template, str) else [str(t) for t in template]
    return [item.replace("{path}", str(path)) for item in items]


def template_text(template: str | Sequence[str]) -> str:
    """A template as the user wrote it, for messages."""
    return template if isinstance(template, str) else shlex.join(str(t) for t in template)


def suggest_arg(found: Found) -> str:
    """The ``resume_arg`` that fits the script that most likely wrote ``found`` (for the start line's advice)."""
    if found.layout == "hf":
        return "--resume_from_checkpoint {path}"
    if found.layout == "lightning":
        return "--ckpt_path {path}"
    if found.name == "ckpt.pt":
        return "--init_from=resume"
    return "--resume {path}"


def start_note(
    found: Found | None,
    at: Where,
    *,
    resume: bool,
    resume_arg: str | Sequence[str] | None,
    surface: str = "api",
) -> str:
    """The start line about checkpoints: what is resumed, that nothing is there yet, or that a checkpoint is
    there and this run does not use it (and may overwrite it), with how to resume.

    ``surface`` is ``"api"`` (``run(..., resume=True)``) or ``"cli"`` (``colabkit run --resume``).
    """
    if found is None:
        if resume:
            return f"colabkit: no checkpoint in {at.describe()} yet; starting fresh"
        return ""
    skipped = ""
    if found.skipped:
        names = ", ".join(p.name for p in found.skipped[:3])
        skipped = f" ({names} {'is' if len(found.skipped) == 1 else 'are'} incomplete: a save was cut off)"
    if resume and resume_arg is not None:
        tokens = " ".join(shlex.quote(t) for t in resume_tokens(resume_arg, found.path))
        if found.layout == "colabkit":  # its own files: the path says it all
            return f"colabkit: resuming from {found.path}{skipped}; passing {tokens}"
        return f"colabkit: resuming from {found.describe()} in {at.describe()}{skipped}; passing {tokens}"
    arg = suggest_arg(found)
    if resume:
        if found.layout == "colabkit":
            return f"colabkit: resuming from {found.path}{skipped} ($COLABKIT_RESUME)"
        how = _how(arg, surface, with_resume=False)
        return (
            f"colabkit: found {found.describe()} in {at.describe()}{skipped}, but only $COLABKIT_RESUME names it: "
            f"a script that does not read it starts fresh and may overwrite it. To hand it to the script, {how}"
        )
    will = "will overwrite it at its first save" if found.fixed_name else "may overwrite it"
    how = _how(arg if found.layout != "colabkit" else None, surface, with_resume=True)
    return (
        f"colabkit: {found.describe()} is in {at.describe()}{skipped} and this run does not resume from it: "
        f"it starts fresh and {will}. To continue from it instead, {how}"
    )


def _how(arg: str | None, surface: str, *, with_resume: bool) -> str:
    if surface == "cli":
        parts = ["--resume"] if with_resume else []
        if arg is not None:
            parts.append(f"--resume-arg={shlex.quote(arg)}")  # "=": argparse takes "--init_from=resume" for an option
        return f"run `colabkit run {' '.join(parts)} SCRIPT ...` (colabkit's options go before the script)"
    parts = ["resume=True"] if with_resume else []
    if arg is not None:
        parts.append(f"resume_arg={arg!r}")
    return f"run the same cell with {', '.join(parts)}"
