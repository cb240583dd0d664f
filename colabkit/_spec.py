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
import shlex
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
]

MIN_INTERVAL = 0.05  # seconds between GPU samples, at least; below this the sampler costs more than it tells
GRACE_MAX_S = 60.0  # default grace: 60 s before the budget ends, or a tenth of a budget under 10 min
GRACE_FRACTION = 0.1
REDACTED = "***"

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")
_DURATION_FORMS = '"2h", "90m", "45s", "1h30m", or a number of seconds'
_SECRET_NAME = re.compile(r"token|key|secret|passw(or)?d", re.IGNORECASE)


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


def redact(args: Iterable[str]) -> list[str]:
    """Command-line arguments with the values of secret-looking options replaced by ``***``.

    An option whose name holds token, key, secret or password loses its value, written either way:
    ``--api-key X`` and ``--token=X``.

    Examples:
        >>> redact(["--api-key", "sk-123", "--token=abc", "--lr", "3"])
        ['--api-key', '***', '--token=***', '--lr', '3']
    """
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        if arg.startswith("-") and _SECRET_NAME.search(arg.split("=", 1)[0]):
            if "=" in arg:
                arg = arg.split("=", 1)[0] + "=" + REDACTED
            else:
                hide_next = True
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
    resume_arg: str | None = None
    checkpoint_dir: Path = Path("checkpoints")
    budget: float | None = None  # seconds
    grace: float | None = None  # seconds, as asked; None: the default for the budget
    stop: StopTimes = field(default_factory=StopTimes)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    observer: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, script: str | os.PathLike[str], args: Iterable[Any] = (), **options: Any) -> RunSpec:
        """Check and convert ``run()``'s arguments (any of this class's fields, as ``run()`` takes them).

        Raises:
            TypeError: an option that ``run()`` does not have.
            ValueError: ``interval`` below 0.05 s; ``budget`` or ``grace`` not a duration; ``grace`` without
                a budget or not shorter than it; ``resume_arg`` without ``resume=True`` or ``{path}``.
        """
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)} - {"script", "args"})
        if unknown:
            raise TypeError(f"run() got unexpected keyword arguments: {', '.join(unknown)}")
        given = dict(options)
        resume, resume_arg = given.get("resume", False), given.get("resume_arg")
        if resume_arg is not None and (not resume or "{path}" not in resume_arg):
            raise ValueError(
                f"resume_arg={resume_arg!r} needs resume=True and a {{path}} placeholder, "
                "e.g. run(..., resume=True, resume_arg='--resume {path}')"
            )
        interval = given.get("interval", 1.0)
        if given.get("monitor", True) and (not interval or interval < MIN_INTERVAL):
            raise ValueError(f"interval={interval!r} is too short: use at least {MIN_INTERVAL} seconds")
        budget, grace = given.get("budget"), given.get("grace")
        if budget is None:
            if grace is not None:
                raise ValueError(f"grace={grace!r} needs a budget: pass budget= too, e.g. budget='2h', grace='5m'")
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
            if name in given:
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
        """``resume_arg`` split like a shell line, with ``{path}`` filled in (none without ``resume_arg``)."""
        if self.resume_arg is None:
            return []
        return [token.replace("{path}", str(path)) for token in shlex.split(self.resume_arg)]

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
            # the VM ends first; a run past ~12 h dies with the VM, with no chance to save
            kill_at = left
            warnings.warn(
                f"budget={_format.format_span(total)!r} goes past the Colab VM's "
                f"~{_format.format_duration(rt.vm_limit_s or 0)} limit: the VM has about "
                f"{_format.format_duration(left)} left, so colabkit sends SIGTERM {_format.format_span(pause)} "
                "before that instead. Save checkpoints to Drive and re-run with resume=True on a fresh runtime.",
                ColabkitWarning,
                stacklevel=stacklevel + 1,
            )
        return Budget(budget=total, grace=pause, kill_at=kill_at, term_at=max(0.0, kill_at - pause))
