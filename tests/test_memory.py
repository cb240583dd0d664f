"""colabkit._memory: the launcher's side of the memory monitor, fed the files a training child writes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from colabkit import _memhook, _memory
from colabkit._stats import Sample

MIB = 1024**2
GIB = 1024**3
HEADER = ",".join(_memhook.COLUMNS) + "\n"


def append_rows(path, floors, *, start=1, t0=1000.0, dt=0.5, act=4 * GIB):
    """steps.csv rows as the child writes them: one step each, the peak = floor + activations."""
    new = not path.exists()
    with open(path, "a") as fh:
        if new:
            fh.write(HEADER)
        for i, floor in enumerate(floors, start):
            fh.write(f"{i},{i * dt:.4f},{t0 + i * dt:.4f},1,0,{floor + act},{floor + act + 256 * MIB},"
                     f"{floor + act},{floor + act + 256 * MIB},{floor}\n")  # fmt: skip


def test_the_child_is_asked_for_steps_and_the_oom_record(tmp_path):
    watch = _memory.MemoryWatch(tmp_path)
    assert watch.child_env() == {_memhook.STEPS_ENV: str(tmp_path / "steps.csv"), _memhook.OOM_ENV: str(tmp_path)}
    assert _memory.MemoryWatch(tmp_path, history=True).child_env()[_memhook.HISTORY_ENV] == "1"


def test_creep_is_said_once_and_the_early_save_signal_goes_out_near_the_end(tmp_path):
    watch = _memory.MemoryWatch(tmp_path, grace=30.0, contract=True)
    assert watch.poll(1.0, 40 * GIB) == []  # no file yet
    append_rows(tmp_path / "steps.csv", [2 * GIB] * 20)
    assert watch.poll(2.0, 40 * GIB) == []  # flat
    append_rows(tmp_path / "steps.csv", [2 * GIB + i * 50 * MIB for i in range(1, 61)], start=21)
    notes = watch.poll(3.0, 40 * GIB)
    assert len(notes) == 1 and notes[0].startswith("colabkit: memory grows ≈50.0 MiB/step; at this rate the GPU is full in")
    append_rows(tmp_path / "steps.csv", [5 * GIB + i * 50 * MIB for i in range(1, 30)], start=81)
    assert watch.poll(4.0, 40 * GIB) == []  # said once
    assert [m.kind for m in watch.markers] == ["creep"]
    # at 50 MiB a step, 2 steps a second, the 40 GiB GPU is minutes away: no signal yet
    assert watch.creep.seconds_left > 300 and watch.save_now() is False
    watch.creep = watch.creep.__class__(**{**watch.creep.__dict__, "seconds_left": 59.0})  # within 2 x grace
    assert watch.save_now() is True and watch.save_now() is False  # once


def test_no_early_save_for_a_script_without_the_checkpoint_contract(tmp_path):
    watch = _memory.MemoryWatch(tmp_path, contract=False)
    append_rows(tmp_path / "steps.csv", [2 * GIB + i * 500 * MIB for i in range(60)])
    assert watch.poll(1.0, 40 * GIB)
    assert watch.creep is not None and watch.save_now() is False


def test_finish_summarises_steps_headroom_and_the_batch_estimate(tmp_path):
    append_rows(tmp_path / "steps.csv", [2 * GIB] * 30)
    watch = _memory.MemoryWatch(tmp_path, ["--epochs", "1", "--batch-size", "32"])
    samples = tuple(Sample(t=float(i), used=(6 * GIB + 600 * MIB,), total=(15 * GIB,)) for i in range(10))
    report = watch.finish(samples=samples, title="train.py: finished", peak_bytes=6 * GIB + 600 * MIB, total_bytes=15 * GIB)
    assert report.steps.steps == 30 and report.steps.peak_max == 6 * GIB
    assert report.headroom == "the peak used 6.6 GiB of 15.0 GiB (44 %): 8.4 GiB left"
    # per sample (6 - 2) GiB / 32 = 128 MiB; room 13.5 GiB less 344 MiB outside torch, less 256 MiB of cache:
    # (13224 - 2048) MiB / 128 MiB = 87
    assert report.estimate.method == "floor" and report.estimate.largest == 87
    assert report.lines()[0] == "steps: 30 optimizer steps (2/s), peak per step 6.0 GiB median, 6.0 GiB max, floor 2.0 GiB"
    assert report.lines()[2].startswith("batch: estimate: the largest batch that fits is ≈87 (--batch-size 87)")
    assert report.creep is None and report.autopsy is None
    fields = report.to_json()
    assert (fields["steps"], fields["batch_estimate"], fields["timeline"], fields["memory_history"]) == (
        30, 87, "memory.svg", False,
    )  # fmt: skip
    doc = ET.fromstring((tmp_path / "memory.svg").read_text())
    assert "train.py: finished" in "".join(doc.itertext())


def test_finish_after_an_oom_reads_the_autopsy_and_marks_it(tmp_path):
    append_rows(tmp_path / "steps.csv", [2 * GIB] * 10)
    (tmp_path / "oom.json").write_text(json.dumps({
        "history": False, "library_paths": [], "script_dir": str(tmp_path), "snapshot": None, "autocast": None,
        "gpu": {"name": "Tesla T4", "total_memory": 15 * GIB, "capability": [7, 5]},
        "events": [{"requested": 4 * GIB, "allocated": 12 * GIB, "reserved": 12 * GIB, "device_free": 2 * GIB,
                    "device_used": 13 * GIB, "t_s": 5.25, "step": 10,
                    "stack": [{"filename": str(tmp_path / "train.py"), "line": 30, "name": "<module>"}]}],
    }))  # fmt: skip
    watch = _memory.MemoryWatch(tmp_path, ["-b", "64"])
    report = watch.finish(samples=(), title="t", t0_mono=1000.0, total_bytes=15 * GIB, oom=True)
    assert report.autopsy.failed_at == "train.py:30 in <module>" and report.autopsy.fix()[0] == "batch"
    assert report.estimate is None  # a run that ran out of memory gets the fix, not an estimate
    (oom,) = [m for m in watch.markers if m.kind == "oom"]
    assert oom.t == 5.25  # the child's clock: row 1 was at t_s 0.5 = mono 1000.5; the sampler started at 1000.0
    assert report.to_json()["oom_fix"] == "batch"


def test_the_terminal_sparkline_follows_device_memory(tmp_path):
    watch = _memory.MemoryWatch(tmp_path)
    assert watch.sparkline() == ""
    samples = [Sample(t=float(i), used=(i * GIB,), total=(14 * GIB,)) for i in range(15)]
    for s in samples:
        watch.note_sample(s)
        watch.note_sample(s)  # the status line is redrawn more often than samples come: each counts once
    assert watch.sparkline() == "▃▃▄▄▅▅▆▆▇▇██"  # the last 12 samples, 3 .. 14 GiB of 14


def test_chart_redraws_are_throttled_and_wait_for_gpu_memory(tmp_path):
    watch = _memory.MemoryWatch(tmp_path)
    assert not watch.chart_due(0.0)  # nothing to draw: no GPU seen, no torch numbers
    assert watch.chart_due(0.0, gpu=True) and not watch.chart_due(4.9, gpu=True) and watch.chart_due(5.0, gpu=True)
    other = _memory.MemoryWatch(tmp_path)
    append_rows(tmp_path / "steps.csv", [GIB] * 3)
    other.poll(1.0, None)
    assert other.gpu_rows and other.chart_due(1.0)  # torch's numbers are enough


def test_checkpoints_written_during_the_run_are_markers(tmp_path):
    import os

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, mtime in (("ckpt-000001.pkl", 90.0), ("ckpt-000002.pkl", 130.0), ("vocab.txt", 140.0)):
        (folder / name).write_text("x")
        os.utime(folder / name, (mtime, mtime))
    marks = _memory.checkpoint_markers(folder, started_wall=100.0, t0_wall=100.0)
    assert [(m.t, m.kind) for m in marks] == [(30.0, "checkpoint")]
    assert _memory.checkpoint_markers(tmp_path / "absent", 0.0, 0.0) == []


def _run_folder(root, name, **memory):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": "failed", "memory": memory}))
    return folder


def test_history_turns_itself_on_for_the_run_after_an_oom_without_it(tmp_path):
    runs = tmp_path / "runs"
    _run_folder(runs, "20260101-100000-train", steps=10)
    assert _memory.history_wanted(runs, "train") is False
    _run_folder(runs, "20260101-110000-train", oom_fix="batch", memory_history=False)
    _run_folder(runs, "20260101-120000-other", steps=3)  # another script's run does not count
    assert _memory.history_wanted(runs, "train") is True
    assert _memory.history_wanted(runs, "other") is False
    mine = _run_folder(runs, "20260101-110000-train-2", oom_fix="batch", memory_history=True)  # the re-run had it
    assert _memory.history_wanted(runs, "train") is False
    assert _memory.history_wanted(runs, "train", before=mine) is True
    assert _memory.history_wanted(runs, "train-2") is False and _memory.history_wanted(tmp_path / "none", "train") is False
