"""What the GPU monitor records: one ``Sample`` per reading, ``DeviceStats`` per GPU and ``Stats`` per run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import _format
from ._display import html_pre

__all__ = ["BASELINE", "NEW_PIDS", "PID", "Accumulator", "DeviceStats", "Sample", "Stats", "method_rank"]

# attribution methods, most specific first
PID = "pid"  # NVML lists a process of the child's tree
NEW_PIDS = "new-pids"  # NVML lists processes that were not there at launch (PID namespaces hide the tree)
BASELINE = "baseline"  # device used minus used at launch
_METHOD_RANK = {PID: 0, NEW_PIDS: 1, BASELINE: 2}


def method_rank(method: str) -> int:
    """0 for the most specific attribution (``pid``), larger for vaguer ones."""
    return _METHOD_RANK[method]


@dataclass(frozen=True)
class Sample:
    """One reading. Per-GPU tuples are indexed by GPU; ``None`` where NVML could not say.

    ``t`` is seconds since the sampler started; bytes are ``int``; ``util`` in %, ``temp`` in °C,
    ``power_w`` in W. ``child_gpu_bytes`` is the GPU memory attributed to the watched process tree
    by ``attribution``; ``child_rss_bytes`` the host memory the tree uses (PSS where ``/proc`` gives it, so
    pages shared by forked workers count once; RSS otherwise: ``Stats.child_ram_kind`` says which).
    """

    t: float
    used: tuple[int | None, ...] = ()
    total: tuple[int | None, ...] = ()
    util: tuple[int | None, ...] = ()
    temp: tuple[int | None, ...] = ()
    power_w: tuple[float | None, ...] = ()
    child_gpu_bytes: int | None = None
    child_rss_bytes: int | None = None
    attribution: str | None = None

    def __repr__(self) -> str:
        fb = _format.format_bytes
        parts = [f"t={self.t:.2f}"]
        if self.used or self.total:
            gpus = ", ".join(f"{fb(u)}/{fb(t)}" for u, t in zip(self.used, self.total, strict=False))
            parts.append(f"gpu=[{gpus}]")
        if any(u is not None for u in self.util):
            parts.append("util=[" + ", ".join(_format.na(u, "%") for u in self.util) + "]")
        if self.child_gpu_bytes is not None:
            by = f" by {self.attribution}" if self.attribution else ""
            parts.append(f"child_gpu={fb(self.child_gpu_bytes)}{by}")
        if self.child_rss_bytes is not None:
            parts.append(f"child_rss={fb(self.child_rss_bytes)}")
        return f"Sample({', '.join(parts)})"

    def _repr_html_(self) -> str:
        return html_pre(repr(self))


@dataclass(frozen=True)
class DeviceStats:
    """Memory and utilisation of one GPU over the monitored time (bytes, %)."""

    index: int
    peak_used_bytes: int | None
    mean_used_bytes: int | None
    total_bytes: int | None
    util_mean: float | None
    util_p95: int | None

    @property
    def headroom_bytes(self) -> int | None:
        """GPU memory never used at the peak: ``total - peak``."""
        if self.total_bytes is None or self.peak_used_bytes is None:
            return None
        return self.total_bytes - self.peak_used_bytes

    def __repr__(self) -> str:
        fb = _format.format_bytes
        parts = [f"index={self.index}", f"peak={fb(self.peak_used_bytes)}/{fb(self.total_bytes)}"]
        if self.mean_used_bytes is not None:
            parts.append(f"mean={fb(self.mean_used_bytes)}")
        if self.util_mean is not None:
            parts.append(f"util mean {self.util_mean:.0f}% p95 {_format.na(self.util_p95, '%')}")
        return f"DeviceStats({', '.join(parts)})"

    def _repr_html_(self) -> str:
        return html_pre(repr(self))


@dataclass(frozen=True)
class Stats:
    """What the monitor saw. Top-level GPU fields describe the GPU with the highest peak (``device``).

    Examples:
        >>> r.stats
        Stats(duration=1m15s, peak=9.8 GiB/15.0 GiB, headroom=5.2 GiB, util mean 81% p95 99%, child 9.5 GiB by pid)
    """

    duration_s: float
    n_samples: int
    gpu_count: int
    devices: tuple[DeviceStats, ...] = ()
    child_peak_gpu_bytes: int | None = None
    attribution: str | None = None
    child_peak_rss_bytes: int | None = None  # the most host memory the tree used (see child_ram_kind)
    pid_bytes_hidden: bool = False  # NVML listed the child's pid but hid its bytes (containers)
    child_ram_kind: str | None = None  # how RAM was counted: "pss", "rss" or "pss+rss" (see _procs.used_memory)
    ranks: tuple[Any, ...] = ()  # a torchrun run's ranks: each one's peaks (``_ranks.RankStats``)

    @property
    def _top(self) -> DeviceStats | None:
        known = [d for d in self.devices if d.peak_used_bytes is not None]
        return max(known, key=lambda d: d.peak_used_bytes or 0) if known else None

    @property
    def device(self) -> int | None:
        top = self._top
        return top.index if top else None

    @property
    def peak_used_bytes(self) -> int | None:
        top = self._top
        return top.peak_used_bytes if top else None

    @property
    def mean_used_bytes(self) -> int | None:
        top = self._top
        return top.mean_used_bytes if top else None

    @property
    def total_bytes(self) -> int | None:
        top = self._top
        return top.total_bytes if top else None

    @property
    def headroom_bytes(self) -> int | None:
        top = self._top
        return top.headroom_bytes if top else None

    @property
    def util_mean(self) -> float | None:
        top = self._top
        return top.util_mean if top else None

    @property
    def util_p95(self) -> int | None:
        top = self._top
        return top.util_p95 if top else None

    def describe(self, *, duration: bool = True, no_gpu: bool = True) -> str:
        """One line: duration (unless ``duration=False``), peak/total, headroom, utilisation, child memory;
        without a GPU, ``no GPU`` first (unless ``no_gpu=False``: a run said so before it started)."""
        fb = _format.format_bytes
        parts = [f"duration={_format.format_duration(self.duration_s)}"] if duration else []
        if self.gpu_count == 0 and no_gpu:
            parts.append("no GPU")
        if self.gpu_count:
            parts.append(f"peak={fb(self.peak_used_bytes)}/{fb(self.total_bytes)}")
            parts.append(f"headroom={fb(self.headroom_bytes)}")
            mean = "n/a" if self.util_mean is None else f"{self.util_mean:.0f}%"
            p95 = "n/a" if self.util_p95 is None else f"{self.util_p95}%"
            parts.append(f"util mean {mean} p95 {p95}")
            if self.attribution is not None:
                hidden = (
                    " (NVML lists the child's pid but hides its bytes)"
                    if self.pid_bytes_hidden and self.attribution != PID
                    else ""
                )
                parts.append(f"child {fb(self.child_peak_gpu_bytes)} by {self.attribution}{hidden}")
        if self.child_peak_rss_bytes is not None:
            kind = f" ({self.child_ram_kind.upper()})" if self.child_ram_kind else ""
            parts.append(f"RAM peak {fb(self.child_peak_rss_bytes)}{kind}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"Stats({self.describe()})"

    def _repr_html_(self) -> str:
        return html_pre(repr(self))


class Accumulator:
    """Running peak/mean/utilisation histogram of one GPU, so Stats cover more than the buffer."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self.used_sum = 0
        self.used_n = 0
        self.total: int | None = None
        self.util_hist = [0] * 101
        self.util_sum = 0
        self.util_n = 0

    def add(self, used: int | None, total: int | None, util: int | None) -> None:
        if used is not None:
            self.peak = used if self.peak is None else max(self.peak, used)
            self.used_sum += used
            self.used_n += 1
        if total is not None:
            self.total = total
        if util is not None:
            u = min(100, max(0, int(util)))
            self.util_hist[u] += 1
            self.util_sum += u
            self.util_n += 1

    def p95(self) -> int | None:
        """Nearest-rank 95th percentile of the utilisation readings."""
        if not self.util_n:
            return None
        rank = math.ceil(0.95 * self.util_n)
        seen = 0
        for value, count in enumerate(self.util_hist):
            seen += count
            if seen >= rank:
                return value
        return 100  # pragma: no cover

    def stats(self, index: int) -> DeviceStats:
        return DeviceStats(
            index=index,
            peak_used_bytes=self.peak,
            mean_used_bytes=round(self.used_sum / self.used_n) if self.used_n else None,
            total_bytes=self.total,
            util_mean=self.util_sum / self.util_n if self.util_n else None,
            util_p95=self.p95(),
        )
