"""A run's ``budget``: durations like ``"1h30m"``, when SIGTERM and SIGKILL are due, and resume arguments."""

from __future__ import annotations

import re
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import runtime
from .errors import ColabkitWarning

__all__ = ["GRACE_FRACTION", "GRACE_MAX_S", "Budget", "fmt", "parse_duration", "plan", "resume_tokens"]

GRACE_MAX_S = 60.0  # default grace: 60 s before the budget ends, or a tenth of a budget under 10 min
GRACE_FRACTION = 0.1

_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m)?(?:(\d+(?:\.\d*)?)s)?")
_DURATION_FORMS = '"2h", "90m", "45s", "1h30m", or a number of seconds'


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


def fmt(seconds: float | None) -> str:
    """Seconds the way a budget is written: ``7200`` → ``2h``, ``5400`` → ``1h30m``, ``1.5`` → ``1.5s``."""
    if seconds is None:
        return "n/a"
    whole = int(seconds)
    if whole != seconds or seconds < 60:
        return f"{seconds:g}s"
    h, rest = divmod(whole, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


@dataclass(frozen=True)
class Budget:
    """When the child gets SIGTERM and SIGKILL, in seconds after its start."""

    budget: float
    grace: float
    kill_at: float  # the budget's end, or the Colab VM's limit if that comes first
    term_at: float


def plan(budget: str | float | None, grace: str | float | None, rt: runtime.Runtime) -> Budget | None:
    """The SIGTERM/SIGKILL times for ``run(budget=..., grace=...)``, or ``None`` without a budget.

    Warns with ``ColabkitWarning`` when the Colab VM ends before the budget (the warning points at
    the caller of ``run()``, two frames up).

    Raises:
        ValueError: a bad duration, a grace not shorter than the budget, or a grace without a budget.
    """
    if budget is None:
        if grace is not None:
            raise ValueError(
                f"grace={grace!r} needs a budget: pass budget= too, e.g. budget='2h', grace='5m'"
            )
        return None
    total = parse_duration(budget, "budget")
    if grace is None:
        pause = min(GRACE_MAX_S, GRACE_FRACTION * total)
    elif isinstance(grace, (int, float)) and not isinstance(grace, bool) and grace == 0:
        pause = 0.0
    else:
        pause = parse_duration(grace, "grace")
    if pause >= total:
        raise ValueError(
            f"grace={grace!r} is not shorter than budget={budget!r}: pass a grace of a few minutes at most"
        )
    kill_at = total
    left = rt.time_left_s
    if left is not None and left > 0 and left < total:
        # the VM ends first; a run past ~12 h dies with the VM, with no chance to save
        kill_at = left
        warnings.warn(
            f"budget={budget!r} goes past the Colab VM's ~{runtime.format_duration(rt.vm_limit_s or 0)} limit: "
            f"the VM has about {runtime.format_duration(left)} left, so colabkit sends SIGTERM "
            f"{fmt(pause)} before that instead. Save checkpoints to Drive and re-run with resume=True "
            "on a fresh runtime.",
            ColabkitWarning,
            stacklevel=4,  # plan() < _run() < run() < the caller
        )
    return Budget(budget=total, grace=pause, kill_at=kill_at, term_at=max(0.0, kill_at - pause))


def resume_tokens(template: str, path: Path) -> list[str]:
    """``"--resume {path}"`` split like a shell line, with ``{path}`` filled in."""
    return [token.replace("{path}", str(path)) for token in shlex.split(template)]
