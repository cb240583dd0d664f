"""run(resume=..., budget=...) with real children: SIGTERM before the budget ends, SIGKILL at its end,
checkpoints handed back on the next run, and the Colab VM's ~12 h limit."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import psutil
import pytest
from conftest import script

from colabkit import _checkpoint, _loop, _procs, _runtime, cli
from colabkit._run import run
from colabkit._spec import RunSpec, parse_duration
from colabkit.errors import ColabkitWarning, RunFailed

# A script that keeps the contract of docs/long-runs.md: its SIGTERM handler only sets a flag; the loop
# sees it, saves a checkpoint where run() says, and exits 0.
SAVER = """
import os, signal, time
from colabkit import _checkpoint
stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
step = 0
while not stop:
    time.sleep(0.01)
    step += 1
got_term = time.time()
path = _checkpoint.save({"step": step, "got_term": got_term}, os.environ["COLABKIT_CHECKPOINT_DIR"])
print(f"saved {path.name}", flush=True)
"""


# -- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2h", 7200.0),
        ("90m", 5400.0),
        ("45s", 45.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        (" 1H 5M ", 3900.0),
        ("1.5h", 5400.0),
        ("5400", 5400.0),
        ("2.5", 2.5),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_budget_forms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["2 hours", "h", "", "1m2h", "-5m", "2d", "nan", True, None, [1]])
def test_bad_budget_names_the_value_and_the_forms(bad):
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert str(info.value).startswith(f"budget={bad!r} ")
    assert str(info.value).endswith('use "2h", "90m", "45s", "1h30m", or a number of seconds')


def test_zero_or_negative_budget_is_refused():
    with pytest.raises(ValueError, match=r"budget=0 must be more than 0 seconds"):
        parse_duration(0)
    with pytest.raises(ValueError, match=r"grace='-1' must be more than 0 seconds"):
        parse_duration("-1", "grace")


def test_grace_defaults_to_a_minute_or_a_tenth_and_is_checked():
    terminal = _runtime.Runtime(kind="terminal")

    def plan(budget, grace):
        return RunSpec.build("x.py", budget=budget, grace=grace).plan(terminal)

    first = plan("2h", None)
    assert (first.budget, first.grace, first.term_at, first.kill_at) == (7200.0, 60.0, 7140.0, 7200.0)
    assert plan("5m", None).grace == 30.0
    assert plan(10, 0).term_at == 10.0
    assert plan("1h", "5m").term_at == 3300.0
    assert plan(None, None) is None
    with pytest.raises(
        ValueError, match=r"grace=5 is not shorter than budget=5: pass a grace of a few minutes"
    ):
        plan(5, 5)
    with pytest.raises(ValueError, match=r"grace=10 needs a budget: pass budget= too"):
        plan(None, 10)


def test_bad_arguments_are_refused_before_anything_starts(proj):
    script(proj, "x.py", "")
    with pytest.raises(ValueError, match=r"budget='soon' is not a duration"):
        run("x.py", budget="soon")
    with pytest.raises(ValueError, match=r"resume_arg=' ' needs resume=True and the arguments that make the script resume"):
        run("x.py", resume=True, resume_arg=" ")
    with pytest.raises(ValueError, match=r"resume_arg='--init_from=resume' needs resume=True"):
        run("x.py", resume_arg="--init_from=resume")  # a template without {path} is fine, resume=False is not
    with pytest.raises(ValueError, match=r"resume_arg=\('--ckpt_path', '\{path\}'\) needs resume=True"):
        run("x.py", resume_arg=["--ckpt_path", "{path}"])
    with pytest.raises(ValueError) as info:  # a typo would reach the script as it is: it would start over
        run("x.py", resume=True, resume_arg="--resume {pth}")
    assert str(info.value) == (
        "resume_arg='--resume {pth}': {pth} is not filled in by colabkit; write {path} where the checkpoint's path "
        "goes (or no placeholder at all)"
    )
    assert not (proj / "runs").exists()


# -- budget ----------------------------------------------------------------------------------------
def test_sigterm_comes_a_grace_before_the_budget_and_the_script_saves_in_time(proj, capsys):
    """Promise: a script that saves and exits 0 on the budget's SIGTERM is said to be stopped by the budget."""
    script(proj, "saver.py", SAVER)
    t0 = time.time()
    r = run("saver.py", budget=3, grace=2, interval=0.05, check=False)  # SIGTERM after 1 s, SIGKILL after 3 s
    t_end = time.time()
    assert (r.status, r.reason, r.returncode) == ("stopped", "budget", 0)
    with pytest.raises(RunFailed) as info:  # the script did not get to its end: not a success
        r.check()
    assert info.value.message.startswith("saver.py was stopped by budget=3s after ")
    assert info.value.message.endswith(": it exited 0 on SIGTERM, before the end of its work")
    assert info.value.hint.startswith("Run it again with resume=True to go on from its last checkpoint")
    assert info.value.returncode == 0
    saved = _checkpoint.latest(proj / "checkpoints")
    assert saved is not None
    state = _checkpoint.load(saved)
    # in order: the run starts, 1 s later SIGTERM, then the save, then the run ends before the budget
    assert t0 + 1.0 <= state["got_term"] <= saved.stat().st_mtime <= t_end
    assert 1.0 <= r.duration_s < 3.0
    log = r.log_path.read_text()
    sent = re.search(r"\[colabkit\] budget of 3s: sent SIGTERM after \d+\.\ds", log)
    assert sent is not None, log
    assert log.index("ready") < sent.start() < log.index("saved ckpt")
    assert "SIGKILL" not in log.split("sent SIGTERM", 1)[1].split("\n", 1)[1]
    assert "[colabkit] run stopped (budget)" in log
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["budget_s"]) == ("stopped", "budget", 3.0)
    out = capsys.readouterr().out
    assert re.search(r"^colabkit: budget of 3s: sent SIGTERM after \d+\.\ds", out, re.MULTILINE)
    assert "budget 3s: SIGTERM sent 2s before the end" in out
    assert "reason='budget'" in repr(r)


def test_a_script_ignoring_sigterm_is_killed_at_the_budget_with_its_whole_group(proj):
    script(
        proj,
        "stubborn.py",
        """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        kid = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True)
        kid.stdout.readline()
        print(f"grandchild {kid.pid}", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    with pytest.raises(
        RunFailed, match=r"stubborn\.py was stopped by budget=2s after \d+\.\ds \(signal SIGKILL\)"
    ) as info:
        run("stubborn.py", budget=2, grace=1, monitor=False)
    err = info.value
    r = err.result
    assert (r.status, r.reason, r.returncode) == ("stopped", "budget", -9)
    assert err.hint == (
        "Catch SIGTERM in the script, save a checkpoint and exit 0 within grace=1s (see docs/long-runs.md), "
        f"or pass a larger budget=; the output so far is in {r.log_path}"
    )
    assert 2.0 <= r.duration_s < 8.0
    log = r.log_path.read_text()
    kid = int(log.split("grandchild ")[1].split()[0])
    assert log.index("sent SIGTERM") < log.index("[colabkit] budget of 2s is over: sent SIGKILL")
    assert "[colabkit] run stopped (budget)" in log
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["returncode"]) == ("stopped", "budget", -9)
    assert _procs.group_members(summary["pid"]) == []
    assert not psutil.pid_exists(kid) or psutil.Process(kid).status() == psutil.STATUS_ZOMBIE


def test_a_script_that_dies_of_sigterm_is_stopped_not_finished(proj):
    script(proj, "plain.py", "import time\nprint('ready', flush=True)\ntime.sleep(30)\n")
    r = run("plain.py", budget=1, grace=0.5, monitor=False, check=False)
    assert (r.status, r.reason, r.returncode) == ("stopped", "budget", -15)
    assert r.duration_s < 3.0
    with pytest.raises(RunFailed, match=r"plain\.py was stopped by budget=1s after .* \(signal SIGTERM\)"):
        r.check()


def test_a_script_done_before_its_budget_is_left_alone(proj):
    script(proj, "quick.py", "print('hi')\n")
    r = run("quick.py", budget="1h", monitor=False)
    assert (r.status, r.reason, r.budget, r.grace) == ("finished", None, 3600.0, 60.0)
    assert "SIGTERM" not in r.log_path.read_text()


def test_the_status_line_shows_the_time_left():
    budget = RunSpec.build("t.py", budget=60, grace=10).plan(_runtime.Runtime(kind="terminal"))
    facts = {"reason": None, "step": None, "due": None, "budget": budget}
    assert _loop.countdown(15.0, term_sent=None, **facts) == " · 45.0s left"
    assert _loop.countdown(52.0, term_sent=50.0, **facts) == " · SIGTERM sent, SIGKILL in 8.0s"
    assert _loop.countdown(15.0, reason=None, step=None, due=None, budget=None, term_sent=None) == ""


# -- the Colab VM limit ----------------------------------------------------------------------------
@pytest.fixture
def colab_near_the_limit(tmp_path, monkeypatch):
    """A faked Colab VM that has been up 2 s short of 12 hours."""
    root = tmp_path / "vm"
    (root / "var" / "colab").mkdir(parents=True)
    (root / "var" / "colab" / "hostname").write_text("colab-vm\n")
    (root / "proc").mkdir()
    (root / "proc" / "uptime").write_text(f"{12 * 3600 - 2:.2f} 100.00\n")
    monkeypatch.setenv("COLABKIT_SYSROOT", str(root))
    return root


def test_a_budget_past_the_vm_limit_warns_once_and_stops_before_the_vm_ends(
    proj, colab_near_the_limit, capsys
):
    script(proj, "saver.py", SAVER)
    with pytest.warns(ColabkitWarning) as record:
        r = run("saver.py", budget="2h", grace=1, monitor=False, check=False)
    assert len(record) == 1
    message = str(record[0].message)
    assert message.startswith("budget='2h' goes past the Colab VM's ~12h00m limit: the VM has about 2.")
    assert "so colabkit sends SIGTERM 1s before that instead" in message
    assert record[0].filename == __file__  # points at the caller's run() line
    assert (r.status, r.reason, r.returncode) == ("stopped", "budget", 0)
    assert r.budget == 7200.0 and 1.9 <= r.stop_at <= 2.0
    assert r.duration_s < 4.0
    assert _checkpoint.latest(proj / "checkpoints") is not None
    out = capsys.readouterr().out
    assert "colabkit: VM up 11h59m of ~12h00m; about 2.0s left\n" in out


def test_a_budget_that_fails_before_the_vm_limit_says_so(proj, colab_near_the_limit):
    script(proj, "plain.py", "import time\ntime.sleep(30)\n")
    with pytest.warns(ColabkitWarning), pytest.raises(RunFailed) as info:
        run("plain.py", budget="2h", grace=1.5, monitor=False)
    message = info.value.message
    assert re.fullmatch(
        r"plain\.py was stopped by the Colab VM's ~12 h limit \(before budget=2h\) after \d+\.\ds "
        r"\(signal SIGTERM\)",
        message,
    ), message


def test_the_vm_line_is_printed_on_colab_only(proj, tmp_path, monkeypatch, capsys):
    script(proj, "x.py", "")
    run("x.py", monitor=False)
    assert "VM up" not in capsys.readouterr().out
    root = tmp_path / "vm"
    (root / "var" / "colab").mkdir(parents=True)
    (root / "var" / "colab" / "hostname").write_text("colab-vm\n")
    (root / "proc").mkdir()
    (root / "proc" / "uptime").write_text("11400.00 100.00\n")  # 3h10m
    monkeypatch.setenv("COLABKIT_SYSROOT", str(root))
    run("x.py", monitor=False)
    assert "colabkit: VM up 3h10m of ~12h00m; about 8h50m left\n" in capsys.readouterr().out


# -- resume ----------------------------------------------------------------------------------------
COUNTER = """
import argparse, json, os, signal, sys
from colabkit import _checkpoint
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int)
parser.add_argument("--crash-after", type=int, default=None)
parser.add_argument("--resume", default=None)
args = parser.parse_args()
env = os.environ.get("COLABKIT_RESUME")
print("seen " + json.dumps({"env": env, "arg": args.resume, "dir": os.environ["COLABKIT_CHECKPOINT_DIR"]}), flush=True)
state = _checkpoint.load(env) if env else {"step": 0, "done": []}
while state["step"] < args.steps:
    state["step"] += 1
    state["done"].append(state["step"])
    _checkpoint.save(state, os.environ["COLABKIT_CHECKPOINT_DIR"])
    if state["step"] == args.crash_after:
        os.kill(os.getpid(), signal.SIGKILL)  # the VM vanished right after this save
print(f"done at step {state['step']}", flush=True)
"""


def _seen(r) -> dict:
    line = next(line for line in r.log_path.read_text().splitlines() if line.startswith("seen "))
    return json.loads(line[5:])


def test_resume_round_trip_counts_steps_across_two_runs(proj, monkeypatch, capsys):
    script(proj, "count.py", COUNTER)
    ckpts = proj / "my checkpoints"  # a space: the --resume argument must stay one token
    monkeypatch.setenv("COLABKIT_RESUME", "/stale/from/the/kernel.pkl")  # resume=True decides, not the kernel
    first = run(
        "count.py", "--steps", 10, "--crash-after", 4,
        resume=True, resume_arg="--resume {path}", checkpoint_dir="my checkpoints", check=False, monitor=False,
    )  # fmt: skip
    assert (first.status, first.returncode, first.resumed_from) == ("failed", -9, None)
    assert _seen(first) == {"env": None, "arg": None, "dir": str(ckpts)}
    assert f"colabkit: no checkpoint in {ckpts} (checkpoint_dir=) yet; starting fresh\n" in capsys.readouterr().out
    assert json.loads((first.log_dir / "summary.json").read_text())["resumed_from"] is None

    latest = _checkpoint.latest(ckpts)
    assert _checkpoint.load(latest)["step"] == 4
    second = run(
        "count.py", "--steps", 10,
        resume=True, resume_arg="--resume {path}", checkpoint_dir="my checkpoints", monitor=False,
    )  # fmt: skip
    assert second.status == "finished" and second.resumed_from == latest
    assert _seen(second) == {"env": str(latest), "arg": str(latest), "dir": str(ckpts)}
    assert second.args == ("--steps", "10", "--resume", str(latest))
    assert second.log_path.read_text().splitlines()[-1] == "done at step 10"
    assert f"colabkit: resuming from {latest}; passing --resume '{latest}'\n" in capsys.readouterr().out
    summary = json.loads((second.log_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(latest) and summary["args"][-2:] == ["--resume", str(latest)]
    assert f"resumed from {latest}" in second.summary()
    assert _checkpoint.load(_checkpoint.latest(ckpts))["done"] == list(range(1, 11))  # none lost or repeated


def test_without_resume_the_checkpoint_dir_is_still_passed(proj, tmp_path):
    script(proj, "count.py", COUNTER)
    _checkpoint.save({"step": 3, "done": [1, 2, 3]}, proj / "checkpoints")
    r = run("count.py", "--steps", 3, monitor=False)
    assert _seen(r) == {"env": None, "arg": None, "dir": str(proj / "checkpoints")}
    assert r.resumed_from is None
    elsewhere = tmp_path / "abs-ckpts"
    r = run("count.py", "--steps", 1, checkpoint_dir=elsewhere, monitor=False)
    assert _seen(r)["dir"] == str(elsewhere)


def test_budget_then_resume_picks_up_the_checkpoint_saved_on_sigterm(proj):
    script(proj, "saver.py", SAVER)
    first = run("saver.py", budget=1.5, grace=1, monitor=False, check=False)
    saved = _checkpoint.latest(proj / "checkpoints")
    assert first.reason == "budget" and saved is not None
    script(proj, "reader.py", "import os\nprint(os.environ['COLABKIT_RESUME'])\n")
    second = run("reader.py", resume=True, monitor=False)
    assert second.log_path.read_text() == f"{saved}\n"


def test_cli_passes_budget_and_resume(proj, capsys):
    script(proj, "count.py", COUNTER)
    assert cli.main(["run", "--no-monitor", "count.py", "--steps", "2"]) == 0
    latest = _checkpoint.latest(proj / "checkpoints")
    rc = cli.main(
        ["run", "--no-monitor", "--resume", "--resume-arg", "--resume {path}", "--budget", "1h", "count.py",
         "--steps", "3"]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert f"colabkit: resuming from {latest}" in out
    assert json.dumps({"env": str(latest), "arg": str(latest), "dir": str(proj / "checkpoints")}) in out
    assert "done at step 3" in out


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "resumable_train.py"


def test_the_example_stops_on_the_budget_and_resumes_through_run(proj):
    first = run(EXAMPLE, "--steps", 1000, "--step-time", 0.01, "--save-every", 1000, budget=1.5, grace=1,
                resume=True, monitor=False, check=False)  # fmt: skip
    assert (first.status, first.reason, first.returncode) == ("stopped", "budget", 0)
    saved = _checkpoint.latest(proj / "checkpoints")
    step = _checkpoint.load(saved)["step"]
    assert 1 <= step < 1000  # saved because of SIGTERM, not the schedule
    said = [line for line in first.log_path.read_text().splitlines() if line and line[0] != "["]
    assert said[-1] == f"stopped by SIGTERM at step {step}; resume from {saved}"

    second = run(EXAMPLE, "--steps", step + 5, "--step-time", 0.01, resume=True, monitor=False)
    lines = second.log_path.read_text().splitlines()
    assert lines[0] == f"resumed from {saved} at step {step}"
    assert lines[-1] == f"done: {step + 5} steps"
    final = _checkpoint.load(_checkpoint.latest(proj / "checkpoints"))
    assert final["loss_history"] == [1.0 / s for s in range(1, step + 6)]


def test_cli_refuses_a_bad_budget_with_exit_status_2(proj, capsys):
    script(proj, "x.py", "")
    assert cli.main(["run", "--no-monitor", "--budget", "soon", "x.py"]) == 2
    assert capsys.readouterr().err == (
        'colabkit run: budget=\'soon\' is not a duration: use "2h", "90m", "45s", "1h30m", or a number of seconds\n'
    )
