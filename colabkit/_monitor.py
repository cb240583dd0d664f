"""The GPU memory monitor: a sampler thread reading NVML and the watched process tree, and ``monitor()``."""

from __future__ import annotations

import collections
import csv
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _display, _procs, _runtime
from ._stats import BASELINE, NEW_PIDS, PID, Accumulator, Sample, Stats, method_rank
from .errors import NO_GPU, no_gpu_note

__all__ = ["MIN_INTERVAL", "Monitor", "Sampler", "default_source", "monitor"]

MIN_INTERVAL = 0.05  # seconds; below this the sampler costs more than it tells
TREE_REFRESH_S = 3.0  # the child's process tree is walked this often, not every tick
CSV_FLUSH_S = 1.0
MAX_SAMPLES = 36_000  # kept in memory for plots (10 h at 1 s); Stats cover the whole run regardless


class _NoGpu:
    """The source used when NVML is not there: no devices."""

    def device_count(self) -> int:
        return 0

    def read(self, index: int) -> Any:  # pragma: no cover - never called with no devices
        raise IndexError(index)

    def processes(self, index: int) -> list[tuple[int, int | None]]:  # pragma: no cover
        return []


def default_source() -> Any:
    """The shared NVML source, or one with no devices when NVML cannot even be loaded."""
    from . import _nvml

    try:
        return _nvml.source()
    except Exception:  # NVML broken in a way the probe did not foresee: monitor without GPU
        return _NoGpu()


class Sampler:
    """Reads every GPU (and the watched process tree) every ``interval`` seconds on a daemon thread.

    The thread is named ``colabkit-sampler``, sleeps in ``Event.wait`` on a drift-free schedule, keeps
    the last ``max_samples`` samples in memory, and appends a row per sample to ``csv_path``.
    ``sample_once()`` takes one sample synchronously: tests drive it with a scripted source and clock.

    Args:
        source: an object with ``device_count()``, ``read(i)`` and ``processes(i)`` (``colabkit._nvml.NvmlSource``);
            ``None`` means the shared NVML source, or no GPU when NVML is absent.
        clock: seconds, monotonic.
        interval: seconds between samples (at least 0.05).
        pid: root of the process tree whose memory is attributed (``None``: none yet, see ``watch()``).
        csv_path: where to append ``metrics.csv`` rows, or ``None``.
        max_samples: how many samples to keep in memory.
        tree_refresh_s: how often the process tree is walked again.
    """

    def __init__(
        self,
        source: Any = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        interval: float = 1.0,
        pid: int | None = None,
        csv_path: str | os.PathLike[str] | None = None,
        max_samples: int = MAX_SAMPLES,
        tree_refresh_s: float = TREE_REFRESH_S,
    ) -> None:
        if not interval or interval < MIN_INTERVAL:
            raise ValueError(f"interval={interval!r} is too short: use at least {MIN_INTERVAL} seconds")
        self.source = source if source is not None else default_source()
        self.clock = clock
        self.interval = float(interval)
        self.tree_refresh_s = tree_refresh_s
        try:
            self.gpu_count = int(self.source.device_count())
        except Exception:
            self.gpu_count = 0
        self._lock = threading.Lock()
        self._buffer: collections.deque[Sample] = collections.deque(maxlen=max_samples)
        self._acc = [Accumulator() for _ in range(self.gpu_count)]
        self._child_peak: dict[str, int] = {}
        self._rss_peak: int | None = None
        self._pid_bytes_hidden = False
        self._n = 0
        self._tree: _procs.TreeMemory | None = None
        self._base_used: list[int | None] = []
        self._base_pids: set[int] = set()
        self._t0 = clock()
        self._t_last = self._t0
        self._csv_path = Path(csv_path) if csv_path is not None else None
        self._csv_file: Any = None
        self._csv: Any = None
        self._csv_flushed = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ranks: Any = None  # a torchrun run's per-rank peaks (``_ranks.RankPeaks``), fed at each sample
        self._gpu_pids: dict[int, int | None] = {}  # pid -> GPU bytes NVML listed at the last sample
        self.error: BaseException | None = None  # what stopped the thread, if anything did
        self.csv_error: OSError | None = None  # why metrics.csv stopped being written, if it did
        if pid is not None:
            self.watch(pid)

    # -- set-up ---------------------------------------------------------------------------------
    def capture_baseline(self) -> None:
        """Remember device memory and GPU processes now (call before launching the child)."""
        used: list[int | None] = []
        pids: set[int] = set()
        for i in range(self.gpu_count):
            used.append(self._read(i)[0])
            pids.update(pid for pid, _ in self._processes(i))
        self._base_used = used
        self._base_pids = pids

    def watch(self, pid: int) -> None:
        """Attribute memory to the process tree rooted at ``pid`` from now on."""
        self._tree = _procs.TreeMemory(pid, self.tree_refresh_s)

    # -- reading ---------------------------------------------------------------------------------
    def _read(self, index: int) -> tuple[Any, Any, Any, Any, Any]:
        try:
            r = self.source.read(index)
            return (r.used, r.total, r.util, r.temp, r.power_w)
        except Exception:  # a lost GPU mid-run: record n/a, keep sampling
            return (None, None, None, None, None)

    def _processes(self, index: int) -> list[tuple[int, int | None]]:
        try:
            return list(self.source.processes(index))
        except Exception:
            return []

    def _attribute(self, used: list[int | None], tree_pids: set[int]) -> tuple[int | None, str | None]:
        if self.gpu_count == 0:
            return None, None
        procs = [p for i in range(self.gpu_count) for p in self._processes(i)]
        self._gpu_pids = dict(procs)
        # NVML gives None for usedGpuMemory it may not show (containers, no permission): a pid that
        # matches with no byte count proves nothing about how much the child holds
        if tree_pids:
            mine = [b for pid, b in procs if pid in tree_pids]
            if mine and all(b is None for b in mine):
                self._pid_bytes_hidden = True
            elif mine:
                return sum(b for b in mine if b is not None), PID
        if self._tree is not None:
            new = [b for pid, b in procs if pid not in self._base_pids and b is not None]
            if new:
                return sum(new), NEW_PIDS
        if self._base_used and len(self._base_used) == len(used):
            deltas = [
                u - b for u, b in zip(used, self._base_used, strict=False) if u is not None and b is not None
            ]
            if deltas:
                return max(0, sum(deltas)), BASELINE
        return None, None

    def sample_once(self) -> Sample:
        """Take one sample now, record it and return it."""
        now = self.clock()
        reads = [self._read(i) for i in range(self.gpu_count)]
        tree_pids: set[int] = set()
        rss = None
        if self._tree is not None:
            tree_pids, rss = self._tree.read(now)
        used = [r[0] for r in reads]
        child, method = self._attribute(used, tree_pids)
        if self.ranks is not None and tree_pids:
            self.ranks.add(tree_pids, self._gpu_pids)
        sample = Sample(
            t=now - self._t0,
            used=tuple(used),
            total=tuple(r[1] for r in reads),
            util=tuple(r[2] for r in reads),
            temp=tuple(r[3] for r in reads),
            power_w=tuple(r[4] for r in reads),
            child_gpu_bytes=child,
            child_rss_bytes=rss,
            attribution=method,
        )
        with self._lock:
            self._buffer.append(sample)
            self._n += 1
            self._t_last = now
            for acc, r in zip(self._acc, reads, strict=False):
                acc.add(r[0], r[1], r[2])
            if method is not None and child is not None:
                self._child_peak[method] = max(child, self._child_peak.get(method, 0))
            if rss is not None:
                self._rss_peak = rss if self._rss_peak is None else max(self._rss_peak, rss)
        self._write_csv(sample, now)
        return sample

    # -- metrics.csv ------------------------------------------------------------------------------
    def _header(self) -> list[str]:
        cols = ["t_s"]
        for i in range(self.gpu_count):
            cols += [
                f"gpu{i}_used_bytes",
                f"gpu{i}_total_bytes",
                f"gpu{i}_util_pct",
                f"gpu{i}_temp_c",
                f"gpu{i}_power_w",
            ]
        return cols + ["child_gpu_bytes", "child_rss_bytes", "attribution"]

    def _write_csv(self, s: Sample, now: float) -> None:
        if self._csv_path is None or self.csv_error is not None:
            return
        try:
            if self._csv is None:
                new = not self._csv_path.exists() or self._csv_path.stat().st_size == 0
                self._csv_file = open(self._csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in stop()
                self._csv = csv.writer(self._csv_file)
                if new:
                    self._csv.writerow(self._header())
            row: list[Any] = [f"{s.t:.3f}"]
            for i in range(self.gpu_count):
                row += [s.used[i], s.total[i], s.util[i], s.temp[i], s.power_w[i]]
            row += [s.child_gpu_bytes, s.child_rss_bytes, s.attribution]
            self._csv.writerow(["" if v is None else v for v in row])
            if now - self._csv_flushed >= CSV_FLUSH_S:
                self._csv_file.flush()
                self._csv_flushed = now
        except OSError as exc:  # the folder went away (Drive disconnected): keep sampling in memory
            self.csv_error = exc
            self._close_csv()

    def _close_csv(self) -> None:
        fh, self._csv_file, self._csv = self._csv_file, None, None
        if fh is not None:
            try:
                fh.close()
            except OSError as exc:
                if self.csv_error is None:
                    self.csv_error = exc

    # -- thread -------------------------------------------------------------------------------------
    def start(self) -> Sampler:
        """Start the sampler thread (takes a first sample at once)."""
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="colabkit-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        next_t = time.monotonic()
        try:
            while not self._stop.is_set():
                self.sample_once()
                next_t += self.interval
                delay = next_t - time.monotonic()
                if delay < 0:  # fell behind (a slow read): skip the missed ticks instead of bursting
                    next_t = time.monotonic() + self.interval
                    delay = self.interval
                self._stop.wait(delay)
        except BaseException as exc:  # keep the run going; the monitor reports what stopped it
            self.error = exc

    def stop(self) -> Stats:
        """Stop the thread, take a last sample, close ``metrics.csv`` and return the Stats."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
            if self.error is None:
                self.sample_once()
        self._close_csv()
        return self.stats()

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def started_at(self) -> float:
        """When sampling began, on the sampler's clock (``time.monotonic()`` unless a test gave another):
        a sample's ``t`` is seconds after it."""
        return self._t0

    # -- results ------------------------------------------------------------------------------------
    @property
    def samples(self) -> tuple[Sample, ...]:
        with self._lock:
            return tuple(self._buffer)

    @property
    def latest(self) -> Sample | None:
        with self._lock:
            return self._buffer[-1] if self._buffer else None

    def peaks(self) -> list[int | None]:
        """Each GPU's highest memory used so far (the status line's one line per GPU)."""
        with self._lock:
            return [a.peak for a in self._acc]

    def peak_used(self) -> int | None:
        """Highest device memory used so far on any GPU (cheap: for the live status line)."""
        with self._lock:
            peaks = [a.peak for a in self._acc if a.peak is not None]
        return max(peaks) if peaks else None

    def stats(self) -> Stats:
        """Stats over everything sampled so far (not only what the buffer still holds)."""
        with self._lock:
            method = min(self._child_peak, key=method_rank) if self._child_peak else None
            return Stats(
                duration_s=max(0.0, self._t_last - self._t0),
                n_samples=self._n,
                gpu_count=self.gpu_count,
                devices=tuple(acc.stats(i) for i, acc in enumerate(self._acc)),
                child_peak_gpu_bytes=self._child_peak.get(method) if method else None,
                attribution=method,
                child_peak_rss_bytes=self._rss_peak,
                child_ram_kind=self._tree.kind if self._tree is not None else None,
                pid_bytes_hidden=self._pid_bytes_hidden,
                ranks=self.ranks.stats() if self.ranks is not None else (),
            )


class Monitor:
    """The live handle ``monitor()`` yields: samples and stats of the code it surrounds.

    Examples:
        >>> with colabkit.monitor(interval=0.5) as m:
        ...     train()
        >>> m.stats.peak_used_bytes
        10523508736
    """

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler
        self._stats: Stats | None = None

    @property
    def samples(self) -> tuple[Sample, ...]:
        return self._sampler.samples

    @property
    def latest(self) -> Sample | None:
        return self._sampler.latest

    @property
    def stats(self) -> Stats:
        return self._stats if self._stats is not None else self._sampler.stats()

    @property
    def running(self) -> bool:
        return self._sampler.running

    def stop(self) -> Stats:
        """Stop sampling (``monitor()`` does this on exit) and return the final Stats."""
        if self._stats is None:
            self._stats = self._sampler.stop()
        return self._stats

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Monitor {state}: {self.stats.describe()}>"

    def _repr_html_(self) -> str:
        return _display.html_pre(repr(self))


@contextmanager
def monitor(
    interval: float = 1.0, *, source: Any = None, csv_path: str | os.PathLike[str] | None = None
) -> Iterator[Monitor]:
    """Monitor GPU memory and this process's RAM around in-process code.

    Args:
        interval: seconds between samples (at least 0.05).
        source: NVML source override (tests); ``None`` uses the shared NVML session.
        csv_path: optional file to append one row per sample to.

    Returns:
        A context manager yielding a ``Monitor``; its ``stats`` are final after the block.

    Raises:
        ValueError: ``interval`` below 0.05 seconds.

    Examples:
        >>> with colabkit.monitor() as m:
        ...     model.fit(x, y)
        >>> m
        <Monitor stopped: duration=42.0s, peak=9.8 GiB/15.0 GiB, headroom=5.2 GiB, util mean 81% p95 99%, ...>
    """
    sampler = Sampler(source, interval=interval, pid=os.getpid(), csv_path=csv_path)
    if sampler.gpu_count == 0:
        rt = _runtime.detect_runtime()
        _display.note_once(NO_GPU, f"colabkit: {no_gpu_note(rt.kind, tpu=rt.tpu)}")
    sampler.capture_baseline()
    handle = Monitor(sampler)
    sampler.start()
    try:
        yield handle
    finally:
        handle.stop()
