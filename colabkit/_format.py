"""How colabkit writes numbers for people: bytes, durations and missing values, in one place."""

from __future__ import annotations

__all__ = ["format_bytes", "format_duration", "format_gib", "format_span", "na"]


def format_bytes(n: int | float | None) -> str:
    """``None`` → ``n/a``, ``1536`` → ``1.5 KiB``, ``16106127360`` → ``15.0 GiB`` (GiB is the largest unit)."""
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_gib(n: int | float | None) -> str:
    """``None`` → ``n/a``, ``16106127360`` → ``15.0 GiB`` (always GiB, for columns that line up)."""
    return "n/a" if n is None else f"{n / 1024**3:.1f} GiB"


def format_duration(seconds: float | None) -> str:
    """How long something took or has left: ``4.2`` → ``4.2s``, ``75`` → ``1m15s``, ``3725`` → ``1h02m``."""
    if seconds is None:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_span(seconds: float | None) -> str:
    """A duration the way a user writes a budget: ``7200`` → ``2h``, ``5400`` → ``1h30m``, ``1.5`` → ``1.5s``."""
    if seconds is None:
        return "n/a"
    whole = int(seconds)
    if whole != seconds or seconds < 60:
        return f"{seconds:g}s"
    h, rest = divmod(whole, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def na(value: object, unit: str = "") -> str:
    """``None`` → ``n/a``; anything else with its unit: ``na(87, "%")`` → ``87%``."""
    return "n/a" if value is None else f"{value}{unit}"
