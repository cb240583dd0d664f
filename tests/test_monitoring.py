"""The sampler's arithmetic against a scripted NVML and an injected clock; the thread, metrics.csv, monitor(), watch."""

from __future__ import annotations

import csv
import errno
import os
import threading
from types import SimpleNamespace

import psutil
import pytest

from colabkit import _display, _gpu, _monitor, _procs, _stats, cli
from colabkit._monitor import Sampler
from colabkit._nvml import DeviceReading
from colabkit._stats import Stats

GIB = 1024**3


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class ScriptedNvml:
    """NvmlSource with exact numbers: ``ticks`` is a list of per-GPU (reading, processes) lists.

    The source stays on the current tick until ``tick`` is moved; ``reads`` counts calls to ``read``.
    """

    def __init__(self, ticks: list[list[tuple[DeviceReading, list[tuple[int, int | None]]]]]) -> None:
        self.ticks = ticks
        self.tick = 0
        self.reads = 0
        self.enough = threading.Event()
        self.enough_after: int | None = None

    def device_count(self) -> int:
        return len(self.ticks[0])

    def read(self, index: int) -> DeviceReading:
        self.reads += 1
        if self.enough_after is not None and self.reads >= self.enough_after:
            self.enough.set()
        return self.ticks[min(self.tick, len(self.ticks) - 1)][index][0]

    def processes(self, index: int) -> list[tuple[int, int | None]]:
        return list(self.ticks[min(self.tick, len(self.ticks) - 1)][index][1])


def reading(
    used_gib: float | None,
    total_gib: float = 16,
    util: int | None = 50,
    temp: int | None = 60,
    power: float | None = 70.0,
):
    used = None if used_gib is None else int(used_gib * GIB)
    return DeviceReading(used=used, total=int(total_gib * GIB), util=util, temp=temp, power_w=power)


def drive(sampler: Sampler, src: ScriptedNvml, clock: Clock, step: float = 1.0) -> list:
    """Take one sample per scripted tick (tick 0 is the baseline), moving the clock by ``step``."""
    out = []
    for i in range(1, len(src.ticks)):
        src.tick = i
        clock.t += step
        out.append(sampler.sample_once())
    return out


def test_stats_peak_mean_headroom_and_utilisation():
    ticks = [[(reading(1), [])]] + [
        [(reading(u, util=p), [])] for u, p in [(2, 10), (6, 90), (4, 100), (None, None)]
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, interval=1.0)
    drive(sampler, src, clock)
    stats = sampler.stats()
    assert isinstance(stats, Stats)
    assert stats.gpu_count == 1 and stats.n_samples == 4
    assert stats.peak_used_bytes == 6 * GIB
    assert stats.mean_used_bytes == 4 * GIB  # (2 + 6 + 4) / 3: a None reading is not a zero
    assert stats.total_bytes == 16 * GIB
    assert stats.headroom_bytes == 10 * GIB
    assert stats.util_mean == pytest.approx(200 / 3)
    assert stats.util_p95 == 100
    assert stats.duration_s == pytest.approx(4.0)
    assert "peak=6.0 GiB/16.0 GiB" in repr(stats) and "headroom=10.0 GiB" in repr(stats)


def test_p95_is_the_nearest_rank_over_all_samples_even_past_the_buffer():
    ticks = [[(reading(1, util=0), [])]] + [[(reading(1, util=u), [])] for u in range(1, 101)]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, interval=1.0, max_samples=10)
    drive(sampler, src, clock)
    assert len(sampler.samples) == 10  # bounded buffer
    stats = sampler.stats()
    assert stats.n_samples == 100
    assert stats.util_p95 == 95
    assert stats.util_mean == pytest.approx(50.5)


def test_the_busiest_gpu_gives_the_top_level_numbers():
    ticks = [
        [(reading(1, total_gib=16), []), (reading(1, total_gib=80), [])],
        [(reading(3, total_gib=16), []), (reading(40, total_gib=80, util=99), [])],
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock)
    drive(sampler, src, clock)
    stats = sampler.stats()
    assert stats.device == 1
    assert stats.peak_used_bytes == 40 * GIB and stats.headroom_bytes == 40 * GIB
    assert [d.peak_used_bytes for d in stats.devices] == [3 * GIB, 40 * GIB]
    assert stats.devices[0].headroom_bytes == 13 * GIB


def test_attribution_by_pid_of_the_watched_tree():
    me = os.getpid()
    ticks = [
        [(reading(1), [(4242, 1 * GIB)])],
        [(reading(5), [(4242, 1 * GIB), (me, 3 * GIB)])],
        [(reading(4), [(4242, 1 * GIB), (me, 2 * GIB)])],
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, pid=me)
    sampler.capture_baseline()
    samples = drive(sampler, src, clock)
    assert [(s.child_gpu_bytes, s.attribution) for s in samples] == [(3 * GIB, "pid"), (2 * GIB, "pid")]
    assert samples[0].child_rss_bytes is not None and samples[0].child_rss_bytes > 0
    stats = sampler.stats()
    assert (stats.child_peak_gpu_bytes, stats.attribution) == (3 * GIB, "pid")


def test_attribution_by_pids_that_appeared_after_launch():
    me = os.getpid()
    # a PID namespace hides the child: NVML reports host PIDs that match nothing in the tree
    ticks = [
        [(reading(2), [(4242, 2 * GIB)])],
        [(reading(9), [(4242, 2 * GIB), (77001, 7 * GIB)])],
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, pid=me)
    sampler.capture_baseline()
    (sample,) = drive(sampler, src, clock)
    assert (sample.child_gpu_bytes, sample.attribution) == (7 * GIB, "new-pids")
    assert sampler.stats().attribution == "new-pids"


def test_attribution_by_device_used_minus_baseline():
    ticks = [
        [(reading(1.5), []), (reading(0.5), [])],
        [(reading(4.5), []), (reading(0.5), [])],
        [(reading(1.0), []), (reading(0.5), [])],  # below the baseline: never negative
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, pid=os.getpid())
    sampler.capture_baseline()
    samples = drive(sampler, src, clock)
    assert [(s.child_gpu_bytes, s.attribution) for s in samples] == [(3 * GIB, "baseline"), (0, "baseline")]
    stats = sampler.stats()
    assert (stats.child_peak_gpu_bytes, stats.attribution) == (3 * GIB, "baseline")


def test_a_matched_pid_whose_bytes_nvml_hides_falls_through_to_the_baseline():
    me = os.getpid()
    # containers without permission: NVML lists the child's pid with usedGpuMemory None
    ticks = [[(reading(1), [])], [(reading(9), [(me, None)])]]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, pid=me)
    sampler.capture_baseline()
    (sample,) = drive(sampler, src, clock)
    assert (sample.child_gpu_bytes, sample.attribution) == (8 * GIB, "baseline")
    stats = sampler.stats()
    assert (stats.child_peak_gpu_bytes, stats.attribution, stats.pid_bytes_hidden) == (
        8 * GIB,
        "baseline",
        True,
    )
    assert "child 8.0 GiB by baseline (NVML lists the child's pid but hides its bytes)" in stats.describe()


def test_hidden_bytes_of_new_pids_fall_through_and_known_bytes_still_count():
    me = os.getpid()
    ticks = [
        [(reading(2), [(4242, 2 * GIB)])],
        [(reading(9), [(4242, 2 * GIB), (77001, None)])],  # a new pid, bytes hidden: no evidence
        [(reading(9), [(me, None), (me + 1, 3 * GIB)])],  # one of the tree's pids known: pid wins
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, pid=me)
    sampler.capture_baseline()
    sampler._tree.read = lambda now: ({me, me + 1}, None)
    hidden, known = drive(sampler, src, clock)
    assert (hidden.child_gpu_bytes, hidden.attribution) == (7 * GIB, "baseline")
    assert (known.child_gpu_bytes, known.attribution) == (3 * GIB, "pid")
    assert "hides" not in sampler.stats().describe()  # pid attribution stands on known bytes


def test_the_most_specific_method_seen_wins():
    me = os.getpid()
    ticks = [
        [(reading(1), [])],
        [(reading(9), [])],  # baseline: 8 GiB (the context appeared before NVML listed the process)
        [(reading(6), [(me, 5 * GIB)])],  # pid: 5 GiB
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, pid=me)
    sampler.capture_baseline()
    drive(sampler, src, clock)
    stats = sampler.stats()
    assert (stats.attribution, stats.child_peak_gpu_bytes) == ("pid", 5 * GIB)


def test_unreadable_fields_are_none_not_zero_and_a_raising_source_does_not_stop_sampling():
    class Flaky(ScriptedNvml):
        def read(self, index):
            if self.tick == 2:
                raise RuntimeError("GPU is lost")
            return super().read(index)

    ticks = [[(reading(1), [])], [(reading(2, util=None, temp=None, power=None), [])], [(reading(3), [])]]
    src, clock = Flaky(ticks), Clock()
    sampler = Sampler(src, clock)
    first, lost = drive(sampler, src, clock)
    assert first.util == (None,) and first.temp == (None,) and first.power_w == (None,)
    assert lost.used == (None,) and lost.total == (None,)
    assert sampler.stats().peak_used_bytes == 2 * GIB
    assert "n/a" in _display.format_status(first, None, 1.0)


def test_no_gpu_still_tracks_ram_and_time():
    clock = Clock()
    sampler = Sampler(_monitor._NoGpu(), clock, pid=os.getpid())
    clock.t += 2.5
    sample = sampler.sample_once()
    assert sample.used == () and sample.child_gpu_bytes is None and sample.attribution is None
    assert sample.child_rss_bytes > 1024 * 1024
    stats = sampler.stats()
    assert stats.gpu_count == 0 and stats.peak_used_bytes is None and stats.duration_s == pytest.approx(2.5)
    assert stats.child_peak_rss_bytes == sample.child_rss_bytes
    assert "no GPU" in stats.describe()


def test_the_process_tree_is_walked_every_few_seconds_not_every_tick(monkeypatch):
    walks = []
    real = psutil.Process.children
    me = os.getpid()

    def counting(self, *args, **kwargs):
        if self.pid == me:  # a walk of the watched tree
            walks.append(clock())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(psutil.Process, "children", counting)
    clock = Clock()
    sampler = Sampler(_monitor._NoGpu(), clock, interval=0.1, pid=me, tree_refresh_s=3.0)
    for _ in range(50):  # 5 seconds of 0.1 s ticks
        clock.t += 0.1
        sampler.sample_once()
    assert len(walks) == 2


def test_interval_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match=r"interval=0\.01 is too short: use at least 0\.05 seconds"):
        Sampler(_monitor._NoGpu(), interval=0.01)


def test_metrics_csv_rows_are_on_disk_while_sampling(tmp_path):
    ticks = [[(reading(1), [])], [(reading(2, util=30), [])], [(reading(3, util=40), [])]]
    src, clock = ScriptedNvml(ticks), Clock()
    path = tmp_path / "metrics.csv"
    sampler = Sampler(src, clock, csv_path=path)
    drive(sampler, src, clock, step=1.5)
    rows = list(csv.DictReader(path.read_text().splitlines()))  # read before stop(): flushed as it goes
    assert [r["gpu0_used_bytes"] for r in rows] == [str(2 * GIB), str(3 * GIB)]
    assert [r["gpu0_util_pct"] for r in rows] == ["30", "40"]
    assert rows[0]["t_s"] == "1.500" and rows[0]["child_gpu_bytes"] == ""
    sampler.stop()


def test_the_thread_samples_on_schedule_and_stops_at_once(tmp_path):
    ticks = [[(reading(1), [])]]
    src = ScriptedNvml(ticks)
    src.enough_after = 4
    sampler = Sampler(src, interval=0.05, csv_path=tmp_path / "m.csv")
    sampler.start()
    assert any(t.name == "colabkit-sampler" and t.daemon for t in threading.enumerate())
    assert src.enough.wait(10)
    stats = sampler.stop()
    assert not any(t.name == "colabkit-sampler" for t in threading.enumerate())
    assert stats.n_samples >= 4
    assert len((tmp_path / "m.csv").read_text().splitlines()) == stats.n_samples + 1


def test_metrics_csv_that_cannot_be_written_any_more_does_not_stop_sampling():
    # /dev/full fails every flush with ENOSPC, as a dead Drive mount fails with ENOTCONN
    src, clock = ScriptedNvml([[(reading(1), [])], [(reading(2), [])], [(reading(3), [])]]), Clock()
    sampler = Sampler(src, clock, csv_path="/dev/full")
    samples = drive(sampler, src, clock)
    assert isinstance(sampler.csv_error, OSError) and sampler.csv_error.errno == errno.ENOSPC
    stats = sampler.stop()
    assert len(samples) == 2 and stats.n_samples == 2 and stats.peak_used_bytes == 3 * GIB


def test_reprs_are_short_and_html_is_escaped():
    sample = _stats.Sample(t=1.5, used=(2 * GIB,), total=(16 * GIB,), util=(None,))
    assert repr(sample) == "Sample(t=1.50, gpu=[2.0 GiB/16.0 GiB])"
    assert repr(_stats.Sample(t=0.0)) == "Sample(t=0.00)"
    full = _stats.Sample(
        t=2.0,
        used=(GIB,),
        total=(4 * GIB,),
        util=(80,),
        child_gpu_bytes=GIB,
        child_rss_bytes=GIB,
        attribution="pid",
    )
    assert (
        repr(full)
        == "Sample(t=2.00, gpu=[1.0 GiB/4.0 GiB], util=[80%], child_gpu=1.0 GiB by pid, child_rss=1.0 GiB)"
    )
    dev = _stats.DeviceStats(0, 3 * GIB, None, 16 * GIB, None, None)
    assert repr(dev) == "DeviceStats(index=0, peak=3.0 GiB/16.0 GiB)"
    dev = _stats.DeviceStats(1, 3 * GIB, 2 * GIB, 16 * GIB, 50.0, 90)
    assert repr(dev) == "DeviceStats(index=1, peak=3.0 GiB/16.0 GiB, mean=2.0 GiB, util mean 50% p95 90%)"
    stats = Stats(duration_s=1.0, n_samples=1, gpu_count=1, devices=(dev,), attribution="<b>")
    for obj in (sample, dev, stats):
        html = obj._repr_html_()
        assert html.startswith("<pre>") and html.endswith("</pre>")
    assert "&lt;b&gt;" in stats._repr_html_() and "<b>" not in stats._repr_html_()


def test_monitor_context_manager_without_gpu_says_so(capsys):
    with _monitor.monitor(interval=0.05, source=_monitor._NoGpu()) as m:
        assert m.running
        data = bytearray(8 * 1024 * 1024)
    del data
    assert not m.running
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (  # the one wording of "no GPU", with the fix for this runtime (a terminal)
        "colabkit: no GPU: running on the CPU, much slower. Install the NVIDIA driver for this machine's GPU"
        " and check that `nvidia-smi` lists it; in a container, start it with GPU access (docker run --gpus all ...)."
    )
    assert m.stats.n_samples >= 2 and m.stats.gpu_count == 0
    assert m.stats.child_peak_rss_bytes > 8 * 1024 * 1024
    assert repr(m).startswith("<Monitor stopped: duration=")
    assert m._repr_html_().startswith("<pre>&lt;Monitor stopped")


def test_monitor_with_a_scripted_gpu_attributes_to_this_process():
    me = os.getpid()
    src = ScriptedNvml([[(reading(3), [(me, 2 * GIB)])]])
    with _monitor.monitor(interval=0.05, source=src) as m:
        pass
    assert m.stats.attribution == "pid" and m.stats.child_peak_gpu_bytes == 2 * GIB
    assert m.stats.peak_used_bytes == 3 * GIB


def test_watch_frame_lists_gpus_and_processes():
    src = ScriptedNvml([[(reading(3, util=87, temp=64, power=71.6), [])]])
    procs = [SimpleNamespace(gpu_index=0, pid=1234, used_bytes=2 * GIB, command="python train.py")]
    ram = _procs.HostMemory(total=16 * GIB, available=12 * GIB)
    frame = cli._watch_frame(src, procs, ram).splitlines()
    assert frame[1] == "GPU 0: 3.0 GiB / 16.0 GiB  util 87%  64°C  72 W"
    assert frame[2] == "  pid    1234     2.0 GiB  python train.py"
    assert frame[3] == "RAM: 4.0 GiB / 16.0 GiB"


def test_watch_cli_without_gpu(capsys, monkeypatch):
    monkeypatch.setattr(_monitor, "default_source", _monitor._NoGpu)
    monkeypatch.setattr(_gpu, "gpu_processes", list)
    assert cli.main(["watch", "-n", "0.05"]) == 1  # no --count: it must not loop
    out, err = capsys.readouterr()
    assert out == ""
    # the one text of "no GPU" (errors.NoGpuError.for_runtime), said for this terminal runtime
    assert err.splitlines() == [
        "colabkit watch: No NVIDIA GPU found (nothing to watch).",
        "HINT: Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it; "
        "in a container, start it with GPU access (docker run --gpus all ...).",
    ]


def test_watch_cli_with_a_gpu_draws_count_frames(capsys, monkeypatch):
    src = ScriptedNvml([[(reading(3, util=87, temp=64, power=71.6), [])]])
    monkeypatch.setattr(_monitor, "default_source", lambda: src)
    monkeypatch.setattr(_gpu, "gpu_processes", list)
    assert cli.main(["watch", "-n", "0.05", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("GPU 0: 3.0 GiB / 16.0 GiB  util 87%  64°C  72 W") == 2


def test_two_gpus_give_one_status_line_each_with_its_own_peak():
    from colabkit import _loop

    ticks = [
        [(reading(1), []), (reading(1), [])],
        [(reading(6), []), (reading(2), [])],
        [(reading(3), []), (reading(4, util=None), [])],
    ]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, interval=1.0)
    drive(sampler, src, clock)
    assert sampler.peaks() == [6 * GIB, 4 * GIB] and sampler.peak_used() == 6 * GIB
    assert _loop.status_text(sampler, 75.0).splitlines() == [
        "GPU0 3.0 GiB/16.0 GiB · peak 6.0 GiB · util 50% · 60°C",
        "GPU1 4.0 GiB/16.0 GiB · peak 4.0 GiB · util n/a · 60°C",
        "1m15s",
    ]
    stats = sampler.stop()
    assert [(d.index, d.peak_used_bytes) for d in stats.devices] == [(0, 6 * GIB), (1, 4 * GIB)]


def test_the_sampler_feeds_each_ranks_peaks():
    seen = []

    class Ranks:
        def add(self, pids, gpu_by_pid):
            seen.append((pids, gpu_by_pid))

        def stats(self):
            return ("rank stats",)

    me = os.getpid()
    ticks = [[(reading(1), [])], [(reading(2), [(me, 3 * GIB)])]]
    src, clock = ScriptedNvml(ticks), Clock()
    sampler = Sampler(src, clock, pid=me)
    sampler.ranks = Ranks()
    drive(sampler, src, clock)
    assert me in seen[0][0] and seen[0][1] == {me: 3 * GIB}
    assert sampler.stop().ranks == ("rank stats",)
