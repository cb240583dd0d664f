"""Headroom and the batch that fits: the batch size in a script's arguments, and the largest batch the GPU would hold.

The estimate is a straight line through what one run showed: ``peak = fixed + batch × per_sample``, where
``fixed`` is what stays allocated between optimizer steps (weights, gradients, optimizer state: the floor
in ``steps.csv``) and ``per_sample`` the rest of the peak divided by the batch. Without a floor (no torch
numbers) the whole peak is taken to grow with the batch, which can only underestimate the batch. The
GPU's total less a 10 % margin, less what is used outside PyTorch (the CUDA context) and the allocator's
slack at the peak, is what a batch may fill. ``run(..., find_batch=True)`` measures instead (``_findbatch``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import _format

__all__ = ["BATCH_FLAGS", "MARGIN", "BatchArg", "BatchEstimate", "estimate_batch", "find_batch_arg", "headroom"]

# the spellings of the common training scripts (argparse, Hugging Face TrainingArguments)
BATCH_FLAGS = ("--batch-size", "--batch_size", "-b", "--per_device_train_batch_size")
MARGIN = 0.10  # of the GPU's total, kept free by the estimate
MAX_FACTOR = 64  # an estimate further than this from the batch that ran is not given


@dataclass(frozen=True)
class BatchArg:
    """Where a script's batch size is in its arguments: ``args[index]`` holds ``value`` (after ``flag=`` if ``inline``)."""

    flag: str
    value: int
    index: int
    inline: str = ""  # the text before the number in the same token: "--batch-size=" or "-b"

    def replaced(self, args: Sequence[str], value: int) -> tuple[str, ...]:
        """``args`` with this batch size set to ``value``."""
        out = [str(a) for a in args]
        out[self.index] = f"{self.inline}{value}"
        return tuple(out)

    def spelled(self, value: int | None = None) -> str:
        """``--batch-size 32`` as the user would type it."""
        return f"{self.flag} {self.value if value is None else value}"


def find_batch_arg(args: Sequence[object]) -> BatchArg | None:
    """The batch size among ``args`` (the last one given, as argparse takes it), or ``None``.

    Examples:
        >>> find_batch_arg(["--epochs", "3", "--batch-size", "64"])
        BatchArg(flag='--batch-size', value=64, index=3, inline='')
    """
    tokens = [str(a) for a in args]
    found = None
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            break
        for flag in BATCH_FLAGS:
            if tok == flag and i + 1 < len(tokens) and tokens[i + 1].isdigit():
                found = BatchArg(flag, int(tokens[i + 1]), i + 1)
                i += 1
                break
            if flag.startswith("--") and tok.startswith(flag + "=") and tok[len(flag) + 1 :].isdigit():
                found = BatchArg(flag, int(tok[len(flag) + 1 :]), i, flag + "=")
                break
            if flag == "-b" and tok.startswith("-b") and tok[2:].isdigit():
                found = BatchArg(flag, int(tok[2:]), i, "-b")
                break
        i += 1
    return found if found is not None and found.value > 0 else None


def headroom(peak: int | None, total: int | None) -> str | None:
    """``the peak used 6.1 GiB of 15.0 GiB (41 %): 8.9 GiB left``, or ``None`` without both numbers."""
    if peak is None or not total:
        return None
    fb = _format.format_bytes
    return f"the peak used {fb(peak)} of {fb(total)} ({100 * peak / total:.0f} %): {fb(max(0, total - peak))} left"


@dataclass(frozen=True)
class BatchEstimate:
    """The largest batch estimated to fit with a ``MARGIN`` margin, and how it was computed (bytes)."""

    arg: BatchArg
    largest: int
    peak_bytes: int
    fixed_bytes: int
    per_sample_bytes: float
    room_bytes: int  # what a batch may fill: total less margin, outside use and slack
    total_bytes: int
    method: str  # "floor": fixed = the floor between steps; "proportional": the whole peak grows with the batch

    def describe(self) -> str:
        fb = _format.format_bytes
        if self.method == "floor":
            how = (
                f"peak {fb(self.peak_bytes)} at {self.arg.spelled()} = {fb(self.fixed_bytes)} that stays between "
                f"steps (weights, gradients, optimizer state) + {fb(self.per_sample_bytes)} per sample"
            )
        else:
            how = (
                f"peak {fb(self.peak_bytes)} at {self.arg.spelled()}, all taken to grow with the batch "
                f"({fb(self.per_sample_bytes)} per sample; no torch numbers, so this errs low)"
            )
        return (
            f"estimate: the largest batch that fits is ≈{self.largest} ({self.arg.spelled(self.largest)}); "
            f"{how}; room {fb(self.room_bytes)} = {fb(self.total_bytes)} less a {MARGIN:.0%} margin and what is "
            "used outside PyTorch. Measure it with run(..., find_batch=True)"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "batch_flag": self.arg.flag,
            "batch": self.arg.value,
            "batch_estimate": self.largest,
            "batch_estimate_method": self.method,
        }


def estimate_batch(
    arg: BatchArg | None,
    *,
    peak_bytes: int | None,
    total_bytes: int | None,
    fixed_bytes: int | None = None,
    outside_bytes: int = 0,
    slack_bytes: int = 0,
) -> BatchEstimate | None:
    """The largest batch that fits, by the straight line described in the module docstring.

    Args:
        arg: the batch size the run used (``find_batch_arg``); ``None`` gives ``None``.
        peak_bytes: the most allocated at once (torch's per-step peak, or the GPU memory the run held).
        total_bytes: the GPU's memory.
        fixed_bytes: what stays allocated between steps (the floor); ``None`` when unknown.
        outside_bytes: GPU memory the run used outside PyTorch's allocator (the CUDA context).
        slack_bytes: reserved but unallocated at the peak (the allocator's cache and rounding).

    Returns:
        The estimate, or ``None`` when the numbers cannot give one (nothing grows with the batch, no room).
    """
    if arg is None or not peak_bytes or not total_bytes:
        return None
    method = "floor" if fixed_bytes is not None and 0 <= fixed_bytes < peak_bytes else "proportional"
    fixed = fixed_bytes if method == "floor" and fixed_bytes is not None else 0
    per_sample = (peak_bytes - fixed) / arg.value
    room = int(total_bytes * (1 - MARGIN)) - outside_bytes - slack_bytes
    if per_sample <= 0 or room <= fixed:
        return None
    largest = math.floor((room - fixed) / per_sample)
    if largest < 1 or largest > MAX_FACTOR * arg.value:
        return None
    return BatchEstimate(arg, largest, peak_bytes, fixed, per_sample, room, total_bytes, method)
