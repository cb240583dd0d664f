"""Surviving the disconnect, end to end through ``colabkit run`` and ``colabkit.run()`` with real child processes:
each layout script (tests/layouts.py) stopped mid-way by its budget, by Stop (SIGINT to the launcher) or by a
SIGKILLed launcher, then run again with ``--resume`` with no step lost or repeated; a Drive that dies mid-run
(the fake DriveFS's bindfs killed) and comes back, the run folder on Drive complete at the end; ``colabkit
attach`` from a second process during a live run; the heartbeat of a quiet run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import layouts
import psutil
import pytest
from conftest import child_env
from fakes.colabvm import hung_fuse, kill_fuse

import colabkit
from colabkit import _mirror, _mounts, _resume
from colabkit._keep import Keeper
from colabkit._run import execute
from colabkit._spec import RunSpec

STEPS = 300  # steps (epochs for imagenet) of a whole run: 6 s or more, twice the budget below
STEP_S = "0.02"
# layout -> (its arguments for a run of n steps, the resume argument, checkpoint_dir, the model a whole run ends with)
CASES = {
    "nanogpt": (lambda n: ["--out_dir=out", f"--max_iters={n}"], "--init_from=resume", None, lambda n: list(range(n))),
    "hf": (lambda n: ["--output_dir", "out", "--max_steps", str(n), "--save_steps", "1"],
           "--resume_from_checkpoint {path}", None, lambda n: list(range(1, n + 1))),
    "imagenet": (lambda n: ["--epochs", str(n)], "--resume {path}", ".", lambda n: list(range(n))),
    "lightning": (lambda n: ["fit", f"--trainer.max_steps={n}", "--trainer.default_root_dir=lit"], "--ckpt_path {path}",
                  None, lambda n: list(range(n))),
}  # fmt: skip
TRAINED = {  # the steps a run trained, as its output tells them, and the first one's number in a fresh run
    "nanogpt": (r"^iter (\d+): loss", 0),
    "hf": (rf"(\d+)/{STEPS} \[", 1),
    "imagenet": (r"^Epoch: \[(\d+)\]", 0),
    "lightning": (rf"(\d+)/{STEPS} \[", 1),
}
RESUMED = {  # what each script prints when it resumes
    "nanogpt": "Resuming training from out",
    "hf": "Continuing training from global step ",
    "imagenet": "=> loaded checkpoint '",
    "lightning": "Restored all states from the checkpoint at ",
}


def _model(layout: str, found: _resume.Found) -> list[int]:
    if layout == "nanogpt":
        return layouts.load(found.path)["model"]
    if layout == "hf":
        return layouts.load(found.path / "model.safetensors")
    return layouts.load(found.path)["state_dict"]


def _where(project: Path, layout: str) -> Path:
    args, _, checkpoint_dir, _ = CASES[layout]
    return _resume.where(checkpoint_dir, args(STEPS), project).path


def _saved(project: Path, layout: str) -> list[int] | None:
    """The model in the newest checkpoint, or None (none yet, or one being replaced as we look)."""
    try:
        found = _resume.find(_where(project, layout))
        return _model(layout, found) if found is not None else None
    except (OSError, KeyError, zipfile.BadZipFile, EOFError):
        return None


def _launch(project: Path, layout: str, *options: str) -> subprocess.Popen:
    args, resume_arg, checkpoint_dir, _ = CASES[layout]
    name = layouts.SCRIPTS[layout][0]
    more = ["--resume", f"--resume-arg={resume_arg}"] if "--resume" in options else []
    more += ["--checkpoint-dir", checkpoint_dir] if checkpoint_dir else []
    command = [sys.executable, "-m", "colabkit", "run", "--no-monitor", *more]
    command += [o for o in options if o != "--resume"] + [name, *args(STEPS)]
    return subprocess.Popen(
        command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(LAYOUT_STEP_S=STEP_S)
    )


def _wait_for_steps(project: Path, layout: str, launcher: subprocess.Popen, steps: int) -> None:
    end = time.monotonic() + 60
    while (_saved(project, layout) or []).__len__() < steps:
        assert launcher.poll() is None, launcher.stdout.read().decode()
        assert time.monotonic() < end, f"no checkpoint with {steps} steps"
        time.sleep(0.02)


def _run_folder(project: Path, index: int) -> Path:
    return sorted(p for p in (project / "runs").iterdir() if p.is_dir())[index]


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def _wait_gone(summary: dict) -> None:
    """Until the run's supervisor (and with it every process of the run) is gone."""
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(summary["supervisor_pid"]).wait(30)


def _last(pattern: str, text: str) -> int:
    return int(re.findall(pattern, text, re.M)[-1])


# the layouts whose output tells the step: nanoGPT's "iter N: loss" and "step N: train loss" lines, HF's tqdm bar
STEP_IN_OUTPUT = {"nanogpt": r"^(?:iter|step) (\d+): ", "hf": rf"(\d+)/{STEPS} \["}


@pytest.mark.parametrize("stop", ["budget", "stop", "kill"])
@pytest.mark.parametrize("layout", list(CASES))
def test_a_run_stopped_mid_way_resumes_with_no_step_lost_or_repeated(tmp_path, layout, stop):
    project = tmp_path / "proj"
    layouts.write(project, layout)
    first = _launch(project, layout, *(["--budget", "3", "--grace", "0.5"] if stop == "budget" else []))
    try:
        if stop == "budget":
            out, _ = first.communicate(timeout=60)
            assert first.returncode == 124, out.decode()
        else:
            _wait_for_steps(project, layout, first, 5)
            first.send_signal(signal.SIGINT if stop == "stop" else signal.SIGKILL)
            out, _ = first.communicate(timeout=60)
            assert first.returncode == (130 if stop == "stop" else -9), out.decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    folder = _run_folder(project, 0)
    _wait_gone(_summary(folder))
    done = _saved(project, layout)
    assert done is not None and 0 < len(done) < STEPS
    assert done == CASES[layout][3](STEPS)[: len(done)]

    listed = subprocess.run(
        [sys.executable, "-m", "colabkit", "runs"], cwd=project, capture_output=True, text=True, env=child_env()
    )
    row = next(line for line in listed.stdout.splitlines() if line.startswith(folder.name))
    summary = _summary(folder)  # as runs() left it: the supervisor's ending applied after a SIGKILLed launcher
    step = summary["last_step"]
    if stop == "budget":
        assert summary["status"] == "stopped" and summary["reason"] == "budget"
        if layout in STEP_IN_OUTPUT:
            log = (folder / "output.log").read_text()
            assert step == _last(STEP_IN_OUTPUT[layout], log) and step > 0
            assert row.endswith(f"stopped by its budget at step {step:,}; resume=True continues it")
        else:
            assert row.endswith("stopped by its budget")
    elif stop == "stop":
        assert summary["status"] == "interrupted" and summary["reason"] == "interrupt"
        assert " stopped with Stop or Ctrl-C" in row
    else:
        assert (summary["status"], summary["reason"]) == ("interrupted", "launcher")
        # the step, when the launcher lived long enough to write it into the summary, is said as that summary has it
        at = f" at step {step:,}" if step is not None else ""
        assert row.endswith(f"ended when the notebook (or colabkit run) that started it died{at}")

    again = _launch(project, layout, "--resume")
    out, _ = again.communicate(timeout=90)
    text = out.decode()
    assert again.returncode == 0, text
    assert "colabkit: resuming from " in text and RESUMED[layout] in text
    found = _resume.find(_where(project, layout))
    assert _model(layout, found) == CASES[layout][3](STEPS)  # every step once, in order
    pattern, first_step = TRAINED[layout]
    log = (_run_folder(project, 1) / "output.log").read_text().replace("\r", "\n")  # each redraw of a bar
    trained = list(dict.fromkeys(int(n) for n in re.findall(pattern, log, re.M)))
    assert trained[0] == len(done) + first_step  # the second run starts where the checkpoint ends: none again
    second = _summary(_run_folder(project, 1))
    assert second["status"] == "finished" and second["resumed_from"] is not None


def test_a_checkpoint_there_without_resume_is_said_before_the_run_starts(tmp_path):
    project = tmp_path / "proj"
    layouts.write(project, "nanogpt")
    (project / "out").mkdir()
    layouts.save({"model": [0, 1], "iter_num": 2}, project / "out/ckpt.pt")
    run = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "train.py", "--out_dir=out", "--max_iters=1"],
        cwd=project, capture_output=True, text=True, env=child_env(LAYOUT_STEP_S="0"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    said = (
        f"colabkit: ckpt.pt (checkpoint file) is in {project / 'out'} (--out_dir out) and this run does not resume "
        "from it: it starts fresh and will overwrite it at its first save. To continue from it instead, run "
        "`colabkit run --resume --resume-arg=--init_from=resume SCRIPT ...` (colabkit's options go before the script)"
    )
    assert said in lines
    assert lines.index(said) < next(i for i, line in enumerate(lines) if line.startswith("iter 0:"))


# -- Drive dies mid-run ------------------------------------------------------------------------------
NANOGPT_ARGS = ("--out_dir=out", "--max_iters=60")


def _drive_run(vm, tmp_path, capsys, fault) -> tuple[object, Path, str]:
    """A nanoGPT-style run whose folder is on the fake Drive; ``fault(loop)`` runs once, at iter 10."""
    colabkit.mount()
    root = vm.mountpoint / "MyDrive/test/runs"
    work = tmp_path / "work"
    layouts.write(work, "nanogpt")
    struck: list[float] = []

    def observer(loop) -> None:
        if not struck and "iter 10:" in loop.seen:
            struck.append(time.monotonic())
            fault(loop)

    spec = RunSpec.build("train.py", NANOGPT_ARGS, cwd=work, log_dir=root, monitor=False, observer=observer)
    result = execute(spec)
    assert struck, "the fault never came"
    return result, root, capsys.readouterr().out


@pytest.mark.fuse
def test_drive_dying_mid_run_the_run_goes_on_and_its_folder_on_drive_ends_complete(vm, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYOUT_STEP_S", "0.05")
    monkeypatch.setattr("colabkit._mirror.COPY_EVERY_S", 0.3)  # a pass every 0.3 s: the outage is met mid-run
    result, root, out = _drive_run(vm, tmp_path, capsys, lambda loop: kill_fuse(vm.mountpoint))
    assert result.status == "finished" and result.log_dir.parent == root
    assert out.count("colabkit: cannot copy the run folder to Drive ([Errno 107]") == 1  # said once
    assert "the run goes on and its folder is kept on this VM's disk" in out
    lines = out.splitlines()
    said = next(i for i, line in enumerate(lines) if line.startswith("colabkit: cannot copy the run folder"))
    assert said < lines.index(next(line for line in lines if line.startswith("iter 60:")))  # while the script ran
    assert out.count("colabkit: Drive answers again: the run folder on Drive caught up") == 1
    assert _mounts.probe(vm.mountpoint).state == "live"  # remounted through mount()'s healing path
    on_drive = vm.mydrive / "test/runs" / result.log_dir.name
    log = (on_drive / "output.log").read_text()
    assert [int(n) for n in re.findall(r"^iter (\d+):", log, re.M)] == list(range(61))
    summary = _summary(on_drive)
    assert summary["status"] == "finished" and summary["last_step"] == 60
    copy = summary["copy"]
    assert copy["state"] == "complete" and copy["bytes"] == copy["of"] and copy["behind"] == []
    assert not Path(copy["local_dir"]).exists()  # all of it on Drive: the VM's copy is gone


@pytest.mark.fuse
def test_a_hung_drive_mid_run_costs_the_run_nothing_and_the_copy_catches_up(vm, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYOUT_STEP_S", "0.05")
    monkeypatch.setattr("colabkit._mirror.COPY_EVERY_S", 0.3)
    monkeypatch.setattr("colabkit._mirror.COPY_TIMEOUT_S", 0.5)  # a pass to a hung Drive is ended after 0.5 s
    with contextlib.ExitStack() as stack:
        colabkit.mount()
        root = vm.mountpoint / "MyDrive/test/runs"
        work = tmp_path / "work"
        layouts.write(work, "nanogpt")
        state = {"hung": 0.0, "freed": False}

        def observer(loop) -> None:
            if not state["hung"] and "iter 10:" in loop.seen:
                state["hung"] = time.monotonic()
                stack.enter_context(hung_fuse(vm.mountpoint))
            elif state["hung"] and not state["freed"] and "iter 40:" in loop.seen:
                state["freed"] = True
                stack.close()  # the Drive client answers again

        spec = RunSpec.build("train.py", NANOGPT_ARGS, cwd=work, log_dir=root, monitor=False, observer=observer)
        result = execute(spec)
    out = capsys.readouterr().out
    assert state["freed"] and result.status == "finished"
    assert out.count("Drive does not answer") == 1
    on_drive = vm.mydrive / "test/runs" / result.log_dir.name
    assert [int(n) for n in re.findall(r"^iter (\d+):", (on_drive / "output.log").read_text(), re.M)] == list(range(61))
    assert _summary(on_drive)["copy"]["state"] == "complete"


# -- attach ------------------------------------------------------------------------------------------
TICKER = """
import os, time
i = 0
while not os.path.exists("finish") and i < 1200:  # ticks until the test says finish, then five more
    print(f"tick {i}", flush=True)
    i += 1
    time.sleep(0.1)
for i in range(i, i + 5):
    print(f"tick {i}", flush=True)
    time.sleep(0.1)
"""


TICK = r"^tick (\d+)$"


def _read_until(proc: subprocess.Popen, text: str, seen: list[str], deadline_s: float = 30.0) -> str:
    import select

    end = time.monotonic() + deadline_s
    while text not in "".join(seen):
        left = end - time.monotonic()
        assert left > 0, f"{text!r} never came: {''.join(seen)!r}"
        if select.select([proc.stdout], [], [], left)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536).decode()
            assert chunk, f"ended before {text!r}: {''.join(seen)!r}"
            seen.append(chunk)
    return "".join(seen)


def test_attach_from_a_second_process_then_detach_and_the_run_finishes_normally(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "tick.py").write_text(TICKER)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "tick.py"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(),
    )  # fmt: skip
    attachers: list[subprocess.Popen] = []

    def attach() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "colabkit", "attach", "--lines", "2"],
            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(),
        )  # fmt: skip
        attachers.append(proc)
        return proc

    try:
        end = time.monotonic() + 30
        while not list((project / "runs").glob("*/output.log")) or "tick 3" not in next(
            (project / "runs").glob("*/output.log")
        ).read_text():
            assert time.monotonic() < end and launcher.poll() is None
            time.sleep(0.05)
        name = _run_folder(project, 0).name
        first = attach()
        seen: list[str] = []
        text = _read_until(first, f"colabkit: attached to {name} (tick.py, running ", seen)
        text = _read_until(first, "\ntick ", seen)
        newest = int(re.findall(TICK, text, re.M)[-1])
        text = _read_until(first, f"tick {newest + 3}\n", seen)  # the run's new lines, live
        ticks = [int(n) for n in re.findall(TICK, text, re.M)]
        assert ticks == list(range(ticks[0], newest + 4))  # none lost, none twice
        assert ticks[0] >= 2  # from where the run is now (after its last two lines), not from its start
        first.send_signal(signal.SIGINT)  # Ctrl-C: detach
        rest, _ = first.communicate(timeout=30)
        assert first.returncode == 0
        assert f"colabkit: detached from {name}; it goes on" in text + rest.decode()
        assert launcher.poll() is None  # the run goes on

        second = attach()
        again: list[str] = []
        _read_until(second, f"colabkit: attached to {name} ", again)
        (project / "finish").touch()  # the run ends while the second attach follows it
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 0
        assert ("".join(again) + out.decode()).rstrip().endswith(f"colabkit: {name}: finished")
        launcher_out, _ = launcher.communicate(timeout=30)
        assert launcher.returncode == 0, launcher_out.decode()
        folder = _run_folder(project, 0)
        assert _summary(folder)["status"] == "finished"
        logged = [int(n) for n in re.findall(TICK, (folder / "output.log").read_text(), re.M)]
        assert logged == list(range(len(logged))) and len(logged) > newest + 3 + 5
        assert not (folder / ".live.json").exists()
    finally:
        for proc in (launcher, *attachers):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


# -- heartbeat ---------------------------------------------------------------------------------------
def test_a_quiet_run_keeps_its_status_line_moving_and_its_log_clean(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "quiet.py").write_text("import time\nprint('start', flush=True)\ntime.sleep(1.5)\nprint('end')\n")
    statuses: list[str] = []
    spec = RunSpec.build(
        "quiet.py", cwd=work, log_dir=tmp_path / "runs", monitor=False, heartbeat_s=0.5,
        observer=lambda loop: statuses.append(loop.status_text),
    )  # fmt: skip
    result = execute(spec)
    silences = [float(m.group(1)) for s in statuses if (m := re.search(r" · no output for (\d+\.\d)s$", s))]
    assert silences and min(silences) >= 0.5 and max(silences) >= 1.2  # from 0.5 s of silence on, counting up
    assert silences == sorted(silences)
    assert result.log_path.read_text().startswith("start\nend\n")
    assert "no output for" not in result.log_path.read_text()


@pytest.mark.fuse
def test_checkpoints_on_a_dead_or_hung_drive_are_said_never_waited_for(vm):
    colabkit.mount()
    at = _resume.Where(vm.mountpoint / "MyDrive/test/out", "--out_dir out")
    at.path.mkdir(parents=True)
    layouts.save({"model": [0], "iter_num": 1}, at.path / "ckpt.pt")
    assert _resume.decide(at, resume=True, resume_arg="--init_from=resume").tokens == ("--init_from=resume",)
    with hung_fuse(vm.mountpoint):
        _mounts.forget()
        started = time.monotonic()
        hung = _resume.decide(at, resume=True, resume_arg="--init_from=resume")
        assert time.monotonic() - started < _mounts.PROBE_TIMEOUT_S + 5
    assert (hung.found, hung.resumed_from, hung.tokens) == (None, None, ())
    assert hung.note == (
        f"colabkit: cannot look for checkpoints in {at.path} (--out_dir out) (the Drive at {vm.mountpoint} is hung); "
        "starting fresh"
    )
    kill_fuse(vm.mountpoint)
    _mounts.forget()
    dead = _resume.decide(at, resume=False, resume_arg=None)
    assert dead.note.endswith(f"(the Drive at {vm.mountpoint} is dead); a checkpoint there may be overwritten")


@pytest.mark.parametrize(("front_end", "mode", "lines"), [("vscode", "notebook", True), ("browser", "notebook", False),
                                                          ("vscode", "plain", False)])  # fmt: skip
def test_the_heartbeat_line_goes_to_front_ends_that_take_silence_for_a_hang(tmp_path, capsys, monkeypatch,
                                                                             front_end, mode, lines):  # fmt: skip
    monkeypatch.setenv("COLABKIT_FRONTEND", front_end)
    run_dir = tmp_path / "runs/20260101-120000-train"
    run_dir.mkdir(parents=True)
    keeper = Keeper(run_dir, clock=lambda: 0.0, heartbeat_s=60.0, mode=mode)
    keeper.heard("step 3\n", 0.0)
    assert keeper.turn(59.0, "GPU0 3.2 GiB/15.0 GiB · 59.0s") == "GPU0 3.2 GiB/15.0 GiB · 59.0s"
    assert keeper.turn(61.0, "GPU0 3.2 GiB/15.0 GiB · 1m01s") == "GPU0 3.2 GiB/15.0 GiB · 1m01s · no output for 1m01s"
    keeper.turn(90.0, "GPU0 3.2 GiB/15.0 GiB · 1m30s")  # once per minute of silence
    beats = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[colabkit]")]
    assert beats == (["[colabkit] GPU0 3.2 GiB/15.0 GiB · 1m01s · no output for 1m01s"] if lines else [])
    assert json.loads((run_dir / ".live.json").read_text())["step"] == 3  # what attach shows
    keeper.finish()
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing of it stays in the run folder


@pytest.mark.fuse
def test_the_last_copy_to_drive_is_made_before_the_budget_stops_the_script(vm, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYOUT_STEP_S", "0.05")
    monkeypatch.setattr("colabkit._mirror.COPY_EVERY_S", 1000.0)  # no pass of its own during the run
    colabkit.mount()
    root = vm.mountpoint / "MyDrive/test/runs"
    work = tmp_path / "work"
    layouts.write(work, "nanogpt")
    at_term: list[str] = []

    def observer(loop) -> None:
        if loop.term_sent is not None and not at_term:  # the first turn after the budget's SIGTERM went out
            (folder,) = (vm.mydrive / "test/runs").iterdir()
            at_term.append((folder / "output.log").read_text())

    spec = RunSpec.build("train.py", ("--out_dir=out", "--max_iters=1000"), cwd=work, log_dir=root, monitor=False,
                         budget=2.0, grace=0.5, check=False, observer=observer)  # fmt: skip
    result = execute(spec)
    assert result.reason == "budget" and at_term
    copied = [int(n) for n in re.findall(r"^iter (\d+):", at_term[0], re.M)]
    assert copied and copied == list(range(len(copied)))  # what the script had printed, on Drive before SIGTERM
    assert "sent SIGTERM" not in at_term[0]
    on_drive = vm.mydrive / "test/runs" / result.log_dir.name
    assert _summary(on_drive)["status"] == "stopped" and _summary(on_drive)["copy"]["state"] == "complete"


@pytest.mark.fuse
def test_a_launcher_killed_mid_run_leaves_a_run_folder_on_drive_that_runs_completes(vm, tmp_path):
    colabkit.mount()
    root = vm.mountpoint / "MyDrive/test/runs"
    work = tmp_path / "work"
    work.mkdir()
    (work / "tick.py").write_text(TICKER)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "--log-dir", str(root), "tick.py"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
    )  # fmt: skip
    try:
        end = time.monotonic() + 30
        while not (root.is_dir() and any(root.iterdir())):
            assert time.monotonic() < end and launcher.poll() is None
            time.sleep(0.05)
        (remote,) = root.iterdir()
        local = _mirror.local_dir(remote)
        while "tick 3\n" not in ((local / "output.log").read_text() if (local / "output.log").exists() else ""):
            assert time.monotonic() < end and launcher.poll() is None
            time.sleep(0.05)
        launcher.kill()  # kill -9: its copies to Drive stop with it
        launcher.wait(10)
        _wait_gone(_summary(local))
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    written = (local / "output.log").read_text()
    assert "[colabkit] " in written  # the supervisor's word on how the run ended, written where the run writes
    (listed,) = colabkit.runs(vm.mountpoint / "MyDrive/test")
    assert (listed.status, listed.reason, listed.copy) == ("interrupted", "launcher", "complete")
    assert listed.ending == "ended when the notebook (or colabkit run) that started it died"
    assert (remote / "output.log").read_text() == written  # all of it on Drive
    assert not local.exists()
