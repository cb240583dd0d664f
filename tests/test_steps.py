"""colabkit._steps and _fit: steps.csv read as the child writes it, its summary, creep with an ETA, headroom,
the batch size in a script's arguments and the largest batch estimated to fit."""

from __future__ import annotations

import pytest

from colabkit import _fit, _steps
from colabkit._steps import Step

MIB = 1024**2
GIB = 1024**3
HEADER = "step,t_s,mono_s,n,device,allocated,reserved,peak_allocated,peak_reserved,min_allocated\n"


def rows(floors, *, peak_extra=500 * MIB, dt=0.5, start=1000.0, n=1):
    """One row per floor value: step i ends at ``start + i*dt``; the peak is the floor plus activations."""
    out = []
    for i, floor in enumerate(floors, 1):
        out.append(Step(i * n, i * dt, start + i * dt, n, 0, floor, floor + peak_extra + 64 * MIB,
                        floor + peak_extra, floor + peak_extra + 64 * MIB, floor))  # fmt: skip
    return out


# --- reading ----------------------------------------------------------------------------------------------


def test_the_reader_takes_complete_lines_only_as_the_file_grows(tmp_path):
    path = tmp_path / "steps.csv"
    reader = _steps.StepsReader(path)
    assert reader.poll() == []  # no file yet
    path.write_text(HEADER + "1,0.5000,100.5000,1,0,10,20,30,40,10\n2,1.0")
    assert [r.step for r in reader.poll()] == [1]
    with open(path, "a") as fh:
        fh.write("000,101.0000,1,0,11,20,31,40,11\n3,1.5,101.5,1,,,,,,\n")
    new = reader.poll()
    assert [(r.step, r.t_s, r.allocated) for r in new] == [(2, 1.0, 11), (3, 1.5, None)]
    assert [r.step for r in reader.rows] == [1, 2, 3]
    assert _steps.read_steps(path) == reader.rows


def test_a_garbled_line_is_skipped():
    assert _steps.Step.parse("x,1,2,3,4,5,6,7,8,9") is None
    assert _steps.Step.parse("1,2,3") is None
    assert _steps.Step.parse("1,a,3,1,0,,,,,") is None


# --- the summary -------------------------------------------------------------------------------------------


def test_summary_counts_steps_rate_and_the_median_peak():
    got = _steps.summarize(rows([1 * GIB] * 9, dt=0.25))
    assert (got.steps, got.steps_per_s) == (9, pytest.approx(4.0))
    assert got.peak_p50 == got.peak_max == 1 * GIB + 500 * MIB
    assert got.to_json() == {
        "steps": 9, "steps_per_s": 4.0, "step_peak_p50_bytes": 1 * GIB + 500 * MIB,
        "step_peak_max_bytes": 1 * GIB + 500 * MIB, "step_reserved_max_bytes": 1 * GIB + 564 * MIB,
        "step_floor_bytes": 1 * GIB,
    }  # fmt: skip
    assert got.describe() == "9 optimizer steps (4/s), peak per step 1.5 GiB median, 1.5 GiB max, floor 1.0 GiB"


def test_the_median_weighs_rows_by_the_steps_they_cover():
    a = Step(10, 1, 1, 10, 0, 1, 1, 100, 100, 1)  # ten steps peaking at 100
    b = Step(11, 2, 2, 1, 0, 1, 1, 900, 900, 1)  # one at 900
    assert _steps.summarize([a, b]).peak_p50 == 100
    assert _steps.summarize([]) is None


def test_cpu_rows_give_steps_and_rate_without_memory():
    got = _steps.summarize([Step(i, i, i, 1, None, None, None, None, None, None) for i in range(1, 5)])
    assert (got.steps, got.steps_per_s, got.peak_max, got.floor_last) == (4, 1.0, None, None)
    assert got.describe() == "4 optimizer steps (1/s)"


# --- creep ---------------------------------------------------------------------------------------------------


def test_steady_growth_is_creep_with_rate_and_eta():
    floors = [2 * GIB + i * 40 * MIB for i in range(100)]
    creep = _steps.detect_creep(rows(floors, dt=0.9), 15 * GIB)
    assert creep is not None
    assert creep.rate_per_step == pytest.approx(40 * MIB, rel=0.01)
    # the last peak reserved: 2 GiB + 99*40 MiB + 564 MiB = 6572 MiB; 15 GiB is reached in 220 more steps
    assert creep.steps_left == 220
    assert creep.seconds_left == pytest.approx(220 * 0.9, rel=0.01)
    assert creep.message() == (
        "memory grows ≈40.0 MiB/step; at this rate the GPU is full in ≈220 steps (~3m18s). The usual cause is a "
        "tensor kept across steps, e.g. in a Python list: `losses.append(loss)` keeps every step's graph alive; "
        "append `loss.item()` (or `loss.detach()`) instead."
    )
    assert creep.to_json()["creep_bytes_per_step"] == round(creep.rate_per_step)


@pytest.mark.parametrize(
    "floors",
    [
        [2 * GIB] * 100,  # flat
        [1 * GIB] * 3 + [3 * GIB] * 97,  # Adam's state after the first steps: one jump, then flat
        [2 * GIB + (i % 10) * 8 * MIB for i in range(100)],  # noise that goes back down
        [2 * GIB + i * 64 * 1024 for i in range(100)],  # steady but tiny: 6 MiB in all
        [2 * GIB + i * 40 * MIB for i in range(50)] + [2 * GIB] * 50,  # grew, then freed (a cache cleared)
    ],
    ids=["flat", "warm-up jump", "noise", "tiny", "grew then freed"],
)
def test_what_is_not_creep(floors):
    assert _steps.detect_creep(rows(floors), 15 * GIB) is None


def test_too_few_steps_say_nothing():
    assert _steps.detect_creep(rows([2 * GIB + i * 100 * MIB for i in range(20)]), 15 * GIB) is None


def test_creep_without_a_known_total_has_a_rate_but_no_eta():
    creep = _steps.detect_creep(rows([i * 40 * MIB for i in range(100)]), None)
    assert creep.steps_left is None and creep.seconds_left is None
    assert creep.message().startswith("memory grows ≈40.0 MiB/step. The usual cause")


def test_creep_in_rows_that_cover_several_steps():
    creep = _steps.detect_creep(rows([i * 80 * MIB for i in range(60)], n=2), 15 * GIB)
    assert creep.rate_per_step == pytest.approx(40 * MIB, rel=0.01)


# --- the batch size in the arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag", "value", "index"),
    [
        (["--epochs", "3", "--batch-size", "64"], "--batch-size", 64, 3),
        (["--batch_size=32", "--lr", "0.1"], "--batch_size", 32, 0),
        (["-b", "16"], "-b", 16, 1),
        (["-b8"], "-b", 8, 0),
        (["--per_device_train_batch_size", "4", "--output_dir", "out"], "--per_device_train_batch_size", 4, 1),
        (["--batch-size", "8", "--batch-size", "12"], "--batch-size", 12, 3),  # the last one wins, as in argparse
    ],
)
def test_batch_size_spellings(args, flag, value, index):
    arg = _fit.find_batch_arg(args)
    assert (arg.flag, arg.value, arg.index) == (flag, value, index)
    assert _fit.find_batch_arg(arg.replaced(args, 99)).value == 99


@pytest.mark.parametrize(
    "args",
    [[], ["--epochs", "3"], ["--batch-size", "auto"], ["--batch-size"], ["--", "--batch-size", "8"], ["--batch-size", "0"],
     ["--batch-sizes", "8"], ["-bx"]],
)  # fmt: skip
def test_no_batch_size(args):
    assert _fit.find_batch_arg(args) is None


def test_replaced_keeps_the_spelling():
    args = ["--batch_size=32", "-x"]
    assert _fit.find_batch_arg(args).replaced(args, 64) == ("--batch_size=64", "-x")
    assert _fit.find_batch_arg(["-b8"]).replaced(["-b8"], 16) == ("-b16",)


# --- headroom and the estimate ---------------------------------------------------------------------------------------


def test_headroom_in_words():
    assert _fit.headroom(6 * GIB, 15 * GIB) == "the peak used 6.0 GiB of 15.0 GiB (40 %): 9.0 GiB left"
    assert _fit.headroom(None, 15 * GIB) is None and _fit.headroom(GIB, None) is None


def test_estimate_from_the_floor():
    arg = _fit.find_batch_arg(["--batch-size", "32"])
    est = _fit.estimate_batch(arg, peak_bytes=6 * GIB, total_bytes=15 * GIB, fixed_bytes=2 * GIB,
                              outside_bytes=400 * MIB, slack_bytes=100 * MIB)  # fmt: skip
    # per sample (6 - 2) GiB / 32 = 128 MiB; room 13.5 GiB - 0.5 GiB = 13.0 GiB; (13 - 2) GiB / 128 MiB = 88
    assert (est.method, est.largest, est.per_sample_bytes) == ("floor", 88, 128 * MIB)
    assert est.describe() == (
        "estimate: the largest batch that fits is ≈88 (--batch-size 88); peak 6.0 GiB at --batch-size 32 = 2.0 GiB "
        "that stays between steps (weights, gradients, optimizer state) + 128.0 MiB per sample; room 13.0 GiB = "
        "15.0 GiB less a 10% margin and what is used outside PyTorch. Measure it with run(..., find_batch=True)"
    )
    assert est.to_json() == {"batch_flag": "--batch-size", "batch": 32, "batch_estimate": 88, "batch_estimate_method": "floor"}


def test_estimate_without_a_floor_errs_low():
    arg = _fit.find_batch_arg(["-b", "32"])
    proportional = _fit.estimate_batch(arg, peak_bytes=6 * GIB, total_bytes=15 * GIB)
    with_floor = _fit.estimate_batch(arg, peak_bytes=6 * GIB, total_bytes=15 * GIB, fixed_bytes=2 * GIB)
    assert proportional.method == "proportional" and proportional.largest == 72  # 13.5 / 6 * 32
    assert proportional.largest < with_floor.largest
    assert "no torch numbers, so this errs low" in proportional.describe()


@pytest.mark.parametrize(
    "kw",
    [
        {"peak_bytes": None, "total_bytes": 15 * GIB},
        {"peak_bytes": 6 * GIB, "total_bytes": None},
        {"peak_bytes": 14 * GIB, "total_bytes": 15 * GIB, "fixed_bytes": 13.9 * GIB},  # no room beyond the floor
        {"peak_bytes": 1024, "total_bytes": 15 * GIB, "fixed_bytes": 0},  # ≥ 64x the batch: not an estimate
    ],
)
def test_no_estimate(kw):
    assert _fit.estimate_batch(_fit.find_batch_arg(["-b", "32"]), **kw) is None
    assert _fit.estimate_batch(None, peak_bytes=GIB, total_bytes=15 * GIB) is None
