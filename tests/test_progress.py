"""The step from the output (tqdm counters, ``step N``/``iter N`` lines, pytorch/examples' epoch lines) and the
heartbeat of a quiet run (the status line's tail, and the short line a front end that fears silence gets)."""

from __future__ import annotations

import pytest

from colabkit._heartbeat import Heartbeat, wants_lines
from colabkit._progress import Progress, StepWatch, describe_step


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" 45%|████▌     | 7100/15000 [01:00<01:10, 10.10it/s]", Progress(step=7100, total=15000)),
        ("\r 46%|████▋     | 7150/15000 [01:01<01:09, 10.10it/s, loss=1.2]", Progress(step=7150, total=15000)),
        ("7100it [01:00, 118.3it/s]", Progress(step=7100)),
        ("iter 2400: loss 1.0412, time 101.23ms, mfu 12.40%\n", Progress(step=2400)),
        ("step 2000: train loss 1.0412, val loss 1.4127\n", Progress(step=2000)),
        ("[step 300] task=0.1 | total=0.2\n", Progress(step=300)),
        ("Global step: 55\n", Progress(step=55)),
        ("Epoch 3:  45%|████▌     | 450/1000 [00:10<00:12, 44.1it/s, v_num=0]", Progress(epoch=3, batch=450, batches=1000)),
        ("Epoch: [3][ 10/5005]\tTime  0.101 ( 0.120)\tLoss 6.9e+00\n", Progress(epoch=3, batch=10, batches=5005)),
    ],
)
def test_the_output_tells_the_step(text, expected):
    watch = StepWatch()
    watch.feed(text)
    assert watch.progress == expected and watch.changed


def test_the_newest_counter_wins_and_other_lines_leave_it(tmp_path):
    watch = StepWatch()
    watch.feed("iter 10: loss 1.0\niter 11: loss 1.0\n")
    watch.feed("saving checkpoint to out\n{'loss': 1.2, 'epoch': 0.5}\n")  # says no step: the last one stays
    assert watch.step == 11
    watch.feed("it")  # a line that arrives in pieces
    watch.feed("er 12: loss 1.0\n")
    assert watch.step == 12
    watch.feed("x" * 100_000 + "\n")  # a flood without a counter: the step stays, only the tail is looked at
    assert watch.step == 12
    assert watch.progress.describe() == "step 12"
    watch.feed(" 50%|█████     | 10/20 [00:01<00:01]")
    assert watch.progress.describe() == "step 10 of 20"
    watch.feed("\rEpoch 1:  5%| | 1/20 [00:00<00:01]")  # tqdm redraws from the start of the line
    assert watch.progress.describe() == "epoch 1, batch 1 of 20" and watch.step is None


def test_describe_step():
    assert describe_step(None) == ""
    assert describe_step(7100) == "at step 7,100"
    assert describe_step(7150, 7000) == "at step 7,150 (checkpoint at step 7,000)"
    assert describe_step(None, 7000) == "at step 7,000"
    assert describe_step(7000, 7000) == "at step 7,000"


def test_heartbeat_after_a_silence_and_once_per_silence_interval():
    hb = Heartbeat(60.0, lines=True, now=0.0)
    assert hb.beat(59.9, "GPU n/a · 59.9s") is None and hb.suffix(59.9) == ""
    assert hb.beat(60.0, "GPU n/a · 1m00s") == "[colabkit] GPU n/a · 1m00s · no output for 1m00s"
    assert hb.beat(90.0, "GPU n/a · 1m30s") is None  # not again before another minute of silence
    assert hb.suffix(90.0) == " · no output for 1m30s"
    assert hb.beat(120.0, "s") == "[colabkit] s · no output for 2m00s"
    hb.heard(121.0)  # output again: the silence starts over
    assert hb.suffix(150.0) == "" and hb.beat(180.0, "s") is None
    assert hb.beat(181.0, "s") == "[colabkit] s · no output for 1m00s"
    assert hb.beats == 3


def test_heartbeat_lines_only_where_a_front_end_needs_them():
    quiet = Heartbeat(60.0, lines=False, now=0.0)
    assert quiet.beat(600.0, "s") is None and quiet.suffix(600.0) == " · no output for 10m00s"
    assert Heartbeat(None, lines=True, now=0.0).beat(600.0, "s") is None
    assert Heartbeat(0, lines=True, now=0.0).suffix(600.0) == ""
    assert wants_lines("notebook", "vscode", on_colab=True)
    assert wants_lines("notebook", "headless", on_colab=True)
    assert wants_lines("notebook", None, on_colab=True)  # Colab, front end not known to be the browser
    assert not wants_lines("notebook", "browser", on_colab=True)
    assert not wants_lines("notebook", None, on_colab=False)  # local Jupyter
    assert not wants_lines("terminal", "vscode", on_colab=True)  # the status row moves there
    assert not wants_lines("plain", None, on_colab=True)  # a pipe gets a status line every 30 s anyway
