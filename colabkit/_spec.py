"""What a run is asked to do: ``RunSpec``, built and checked once from ``run()``'s arguments (the CLI builds the same).

Durations (``budget="1h30m"``, ``grace="5m"``) are parsed here, ``resume_arg`` is checked here, and the
arguments as they may be shown (secrets redacted) are derived here; everything after the build reads
a frozen object. The waits of the stop sequence and the clock are part of the spec, so a caller (a
test) can shorten them without touching module globals.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _format, _runtime
from ._stop import StopTimes
from .errors import ColabkitWarning

__all__ = [
    "GRACE_FRACTION",
    "GRACE_MAX_S",
    "MIN_INTERVAL",
    "REDACTED",
    "Budget",
    "RunSpec",
    "parse_duration",
    "redact",
    "secret_name",
]

MIN_INTERVAL = 0.05  # seconds between GPU samples, at least; below this the sampler costs more than it tells
GRACE_MAX_S = 60.0  # default grace: 60 s before the budget ends, or a tenth of a budget under 10 min
GRACE_FRACTION = 0.1
REDACTED = "***"

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")
_DURATION_FORMS = '"2h", "90m", "45s", "1h30m", or a number of seconds'
# a name is secret when one of its words is one of these (``hf_token``, ``wandb.api_key``, ``dbPassword``):
# whole words only, so ``--max-tokens`` and ``--keep-going`` stay as they are
_SECRET_WORDS = frozenset({"token", "secret", "password", "passwd", "credential", "credentials", "apikey"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def parse_duration(value: str | float, name: str = "budget") -> float:
    """Seconds from ``"2h"``, ``"90m"``, ``"45s"``, ``"1h30m"``, ``"1h30m15s"``, ``"5400"`` or a number.

    Args:
        value: the duration as written by the user.
        name: the argument's name, for the message.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: the text is none of those forms, or the duration is not positive.

    Examples:
        >>> parse_duration("1h30m")
        5400.0
    """
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            m = _DURATION.fullmatch(text)
            if m and text and any(m.groups()):
                h, mi, sec = (float(g) if g else 0.0 for g in m.groups())
                seconds = h * 3600 + mi * 60 + sec
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{name}={value!r} is not a duration: use {_DURATION_FORMS}")
    if seconds <= 0:
        raise ValueError(f"{name}={value!r} must be more than 0 seconds: use {_DURATION_FORMS}")
    return seconds


def secret_name(name: str) -> bool:
    """Whether an option or override name says it holds a secret: a word token, secret, password, credential or api key.

    Examples:
        >>> [secret_name(n) for n in ("--api-key", "wandb.api_key", "hfToken", "--max-tokens", "--key")]
        [True, True, True, False, False]
    """
    words = [w.lower() for w in _WORD.findall(name)]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(a == "api" and b == "key" for a, b in zip(words, words[1:], strict=False))


def redact(args: Iterable[str]) -> list[str]:
    """Command-line arguments with the values of secret-looking names replaced by ``***``.

    A name is secret by its words (:func:`secret_name`), in each form a script takes: ``--api-key X``,
    ``--token=X``, and ``key=value`` overrides as Hydra and OmegaConf write them (``wandb.api_key=X``,
    ``+hf_token=X``).

    Examples:
        >>> redact(["--api-key", "sk-123", "--token=abc", "wandb.api_key=k", "--max-tokens", "512"])
        ['--api-key', '***', '--token=***', 'wandb.api_key=***', '--max-tokens', '512']
    """
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        name, eq, _ = arg.partition("=")
        if arg.startswith("-"):
            if secret_name(name):
                if eq:
                    arg = f"{name}={REDACTED}"
                else:
                    hide_next = True
        elif eq and name and secret_name(name.lstrip("+~")):
            arg = f"{name}={REDACTED}"
        out.append(arg)
    return out


@dataclass(frozen=True)
class Budget:
    """When the child gets SIGTERM and SIGKILL, in seconds after its start."""

    budget: float
    grace: float
    kill_at: float  # the budget's end, or the Colab VM's limit if that comes first
    term_at: float

    @property
    def vm_limited(self) -> bool:
        """Whether the VM's limit, not the budget, ends the run."""
        return self.kill_at < self.budget


def _positive_or_zero(value: str | float, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        return 0.0
    return parse_duration(value, name)


@dataclass(frozen=True)
class RunSpec:
    """One run, as asked: ``run()``'s arguments checked and converted (durations in seconds, paths as ``Path``).

    ``stop`` holds the waits of the stop sequence and ``clock`` the clock intervals are measured on;
    ``observer`` (tests) is called with the live run on every turn of its output loop.
    """

    script: str
    args: tuple[str, ...] = ()
    python: str | None = None
    cwd: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    monitor: bool = True
    interval: float = 1.0
    log_dir: Path = Path("runs")
    check: bool = True
    timeout: float | None = None
    release: bool = False
    raw: bool = False
    kill_stale: bool = False
    resume: bool = False
    resume_arg: str | tuple[str, ...] | None = None  # with or without "{path}"; a tuple: arguments as they are
    checkpoint_dir: Path | None = None  # None: the script's --output_dir/--out_dir/--default_root_dir, else checkpoints
    budget: float | None = None  # seconds
    grace: float | None = None  # seconds, as asked; None: the default for the budget
    memory_history: bool | None = None  # allocation history in the child; None: on after an OOM without it
    find_batch: bool = False  # measure the largest batch that fits with probe runs first
    gpus: int | str | None = None  # torchrun, one rank per GPU: a count or "all"
    nproc: int | None = None  # torchrun with this many ranks, with or without GPUs
    secrets: tuple[str, ...] = ()  # names of secrets for the script's environment (never their values)
    heartbeat_s: float | None = 60.0  # seconds of silence before the status line says so (None: never)
    surface: str = "api"  # "cli" when `colabkit run` built it: messages name its options
    stop: StopTimes = field(default_factory=StopTimes)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    observer: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, script: str | os.PathLike[str], args: Iterable[Any] = (), **options: Any) -> RunSpec:
        """Check and convert ``run()``'s arguments (any of this class's fields, as ``run()`` takes them).

        Raises:
            TypeError: an option that ``run()`` does not have.
            ValueError: ``interval`` below 0.05 s; ``budget`` or ``grace`` not a duration; ``grace`` without
                a budget or not shorter than it; ``resume_arg`` without ``resume=True``, or empty;
                ``find_batch=True`` without a batch size among the arguments (or with ranks); ``gpus`` or
                ``nproc`` not a count (``gpus="all"`` too), or the two disagree; a secret name that cannot
                be an environment variable.
            TypeError: ``secrets`` given as one string instead of a list of names; a script argument given as
                a list (``run("t.py", ["--epochs", "3"])``) instead of one by one.
        """
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)} - {"script", "args"})
        if unknown:
            raise TypeError(f"run() got unexpected keyword arguments: {', '.join(unknown)}")
        args = tuple(args)
        for arg in args:
            if isinstance(arg, (list, tuple, set, dict)):  # run("t.py", ["--epochs", "3"]): subprocess's habit
                raise TypeError(
                    f"run() takes the script's arguments one by one, not as a {type(arg).__name__} ({arg!r}): "
                    f"write run({os.fspath(script)!r}, '--epochs', '3'), or run({os.fspath(script)!r}, *args) for a list"
                )
        given = dict(options)
        cli = given.get("surface") == "cli"  # `colabkit run` built it: its options, not run()'s arguments
        resume, resume_arg = given.get("resume", False), given.get("resume_arg")
        if resume_arg is not None:
            if not isinstance(resume_arg, str):  # a list of arguments, taken as they are
                given["resume_arg"] = resume_arg = tuple(str(a) for a in resume_arg)
            if not resume or not "".join(resume_arg).strip():
                raise ValueError(
                    f"--resume-arg {resume_arg!r} needs --resume and the arguments that make the script resume, "
                    "e.g. colabkit run --resume --resume-arg '--resume {path}' train.py"
                    if cli
                    else f"resume_arg={resume_arg!r} needs resume=True and the arguments that make the script "
                    "resume, e.g. run(..., resume=True, resume_arg='--resume {path}') or resume_arg='--init_from=resume'"
                )
            text = resume_arg if isinstance(resume_arg, str) else " ".join(resume_arg)
            other = sorted(set(re.findall(r"\{[^{}]*\}", text)) - {"{path}"})
            if other:  # "{pth}" would reach the script as it is, and it would start fresh over its checkpoint
                raise ValueError(
                    f"{'--resume-arg ' if cli else 'resume_arg='}{text!r}: {', '.join(other)} is not filled in by "
                    "colabkit; write {path} where the checkpoint's path goes (or no placeholder at all)"
                )
        if given.get("find_batch"):
            from ._fit import BATCH_FLAGS, find_batch_arg

            if find_batch_arg([str(a) for a in args]) is None:
                raise ValueError(
                    f"{'--find-batch' if cli else 'find_batch=True'} needs the batch size among the script's "
                    f"arguments, as {', '.join(BATCH_FLAGS)} followed by a number (e.g. "
                    + ("colabkit run --find-batch train.py --batch-size 32)" if cli
                       else "run('train.py', '--batch-size', '32', find_batch=True))")
                )  # fmt: skip
        if given.get("secrets"):
            from ._secrets import check_names

            given["secrets"] = check_names(given["secrets"])
        else:
            given.pop("secrets", None)
        if given.get("gpus") is not None or given.get("nproc") is not None:
            from ._ranks import check_counts

            check_counts(given.get("gpus"), given.get("nproc"))
            if given.get("find_batch"):
                raise ValueError(
                    "--find-batch measures one process: run it without --gpus or --nproc first"
                    if cli
                    else "find_batch=True measures one process: run it without gpus= or nproc= first"
                )
        interval = given.get("interval", 1.0)
        if given.get("monitor", True) and (not interval or interval < MIN_INTERVAL):
            raise ValueError(f"interval={interval!r} is too short: use at least {MIN_INTERVAL} seconds")
        budget, grace = given.get("budget"), given.get("grace")
        if budget is None:
            if grace is not None:
                raise ValueError(
                    f"--grace {grace} needs a budget: pass --budget too, e.g. --budget 2h --grace 5m"
                    if cli
                    else f"grace={grace!r} needs a budget: pass budget= too, e.g. budget='2h', grace='5m'"
                )
        else:
            given["budget"] = parse_duration(budget, "budget")
            if grace is not None:
                given["grace"] = _positive_or_zero(grace, "grace")
                if given["grace"] >= given["budget"]:
                    raise ValueError(
                        f"grace={grace!r} is not shorter than budget={budget!r}: pass a grace of a few minutes at most"
                    )
        if given.get("cwd") is not None:
            given["cwd"] = Path(given["cwd"]).resolve()
        for name in ("log_dir", "checkpoint_dir"):
            if given.get(name) is not None:
                given[name] = Path(given[name])
        if given.get("env") is not None:
            given["env"] = tuple((str(k), str(v)) for k, v in dict(given["env"]).items())
        else:
            given.pop("env", None)
        if given.get("stop") is None:
            given.pop("stop", None)
        if "interval" in given:
            given["interval"] = float(given["interval"])
        return cls(script=os.fspath(script), args=tuple(str(a) for a in args), **given)

    @property
    def shown_args(self) -> tuple[str, ...]:
        """The arguments as they may be recorded and shown: secret-looking values as ``***``."""
        return tuple(redact(self.args))

    def resume_tokens(self, path: Path) -> list[str]:
        """``resume_arg`` as arguments (text split like a shell line), ``{path}`` filled in (none without it)."""
        from ._resume import resume_tokens

        return resume_tokens(self.resume_arg, path)

    def plan(self, rt: _runtime.Runtime, *, stacklevel: int = 2) -> Budget | None:
        """The SIGTERM/SIGKILL times of the budget on this runtime, or ``None`` without a budget.

        Warns with ``ColabkitWarning`` when the Colab VM ends before the budget.
        """
        if self.budget is None:
            return None
        total = self.budget
        pause = min(GRACE_MAX_S, GRACE_FRACTION * total) if self.grace is None else self.grace
        kill_at = total
        left = rt.time_left_s
        if left is not None and 0 < left < total:
            # the machine ends first (the Colab VM, the Kaggle session): a run past it dies with no chance to save
            kill_at = left
            machine, keep = ("VM", "to Drive"), "on a fresh runtime"
            if rt.is_kaggle:
                machine, keep = ("session", "to /kaggle/working"), "in a new session"
            warnings.warn(
                f"budget={_format.format_span(total)!r} goes past the "
                f"{'Kaggle' if rt.is_kaggle else 'Colab'} {machine[0]}'s ~{_format.format_duration(rt.vm_limit_s or 0)} "
                f"limit: the {machine[0]} has about {_format.format_duration(left)} left, so colabkit sends SIGTERM "
                f"{_format.format_span(pause)} before that instead. Save checkpoints {machine[1]} and re-run with "
                f"resume=True {keep}.",
                ColabkitWarning,
                stacklevel=stacklevel + 1,
            )
        return Budget(budget=total, grace=pause, kill_at=kill_at, term_at=max(0.0, kill_at - pause))
