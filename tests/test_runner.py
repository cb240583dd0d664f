"""run() with real children: streaming, \\r lines, throttling, exit statuses, timeout, interrupt, the run folder."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import script
from test_display import screen

from colabkit import _display, _files, _loop, _oom, _procs, _run, _runtime, _stop, cli
from colabkit._result import RunResult
from colabkit._run import run
from colabkit._spec import RunSpec, redact
from colabkit._stop import StopTimes
from colabkit.errors import ColabkitError, CudaOutOfMemory, RunFailed, ScriptNotFound

GIB = 1024**3


def go(script: str, *args, stop: StopTimes | None = None, observer=None, **options) -> RunResult:
    """run() with the stop sequence's waits and an observer of the live run given through the run spec."""
    return _run.execute(RunSpec.build(script, args, stop=stop, observer=observer, **options))


def only_run_dir(folder: Path) -> Path:
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


def test_finished_run_writes_the_run_folder(proj, capsys):
    script(proj, "train.py", "import sys\nprint('args', sys.argv[1:])\n")
    r = run("train.py", "--epochs", 3, interval=0.05)
    assert isinstance(r, RunResult)
    assert (r.status, r.returncode) == ("finished", 0)
    run_dir = only_run_dir(proj)
    assert r.log_dir == run_dir and r.log_path == run_dir / "output.log"
    assert run_dir.name.endswith("-train") and len(run_dir.name) == len("20260101-120000-train")
    assert r.log_path.read_text() == "args ['--epochs', '3']\n"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) == {
        "schema", "status", "script", "args", "started", "ended", "duration_s", "returncode", "pid",
        "pid_create_time", "launcher_pid", "launcher_create_time", "supervisor_pid", "supervisor_create_time",
        "boot_id", "hostname", "peak_gpu_bytes", "gpu_total_bytes", "framework_peak_bytes", "attribution", "log",
        "reason", "resumed_from", "budget_s", "memory", "secrets", "ranks", "gpus", "last_step", "checkpoint_step",
        "checkpoint", "copy",
    }  # fmt: skip
    assert (summary["secrets"], summary["ranks"]) == (None, None)  # one process, no secret
    devices = r.stats.devices if r.stats is not None else ()
    assert summary["gpus"] == (
        [{"index": d.index, "peak_used_bytes": d.peak_used_bytes, "total_bytes": d.total_bytes} for d in devices] or None
    )
    assert summary["schema"] == 1 and summary["status"] == "finished" and summary["returncode"] == 0
    assert (
        summary["script"] == "train.py"
        and summary["args"] == ["--epochs", "3"]
        and summary["log"] == "output.log"
    )
    assert summary["started"].endswith("Z") and summary["ended"].endswith("Z")
    assert summary["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert isinstance(summary["pid"], int) and isinstance(summary["pid_create_time"], float)
    assert summary["launcher_pid"] == os.getpid()
    assert summary["launcher_create_time"] == psutil.Process().create_time()
    assert summary["duration_s"] == pytest.approx(r.duration_s, abs=0.01)
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("t_s,") and len(rows) >= 2
    assert any(s.child_rss_bytes for s in r.samples)  # the child's RAM was seen at least once
    out = capsys.readouterr().out
    assert "args ['--epochs', '3']" in out and "train.py finished (exit status 0)" in out
    assert repr(r).startswith("RunResult(status='finished', returncode=0, duration=")
    assert r.check() is r
    assert "&lt;" not in r._repr_html_() and r._repr_html_().startswith("<pre>train.py finished")


def test_summary_says_running_while_the_child_runs(proj, monkeypatch):
    script(
        proj,
        "slow.py",
        "import sys\nprint('ready', flush=True)\nsys.stdin.read() if False else __import__('time').sleep(0.5)\n",
    )
    seen = []

    def hook(state):
        if "ready" in state.seen and not seen:
            seen.append(json.loads((state.run_dir / "summary.json").read_text()))

    r = go("slow.py", interval=0.05, observer=hook)
    assert (
        seen and seen[0]["status"] == "running" and seen[0]["ended"] is None and seen[0]["returncode"] is None
    )
    assert seen[0]["pid"] == json.loads((r.log_dir / "summary.json").read_text())["pid"]
    proc_create = seen[0]["pid_create_time"]
    assert abs(proc_create - time.time()) < 60


def test_stdout_and_stderr_stream_in_order(proj, capsys, monkeypatch):
    unthrottled = functools.partial(_display.OutputView, max_lines_per_s=10**7)
    monkeypatch.setattr(_display, "OutputView", unthrottled)  # the screen shows every line
    script(
        proj,
        "talk.py",
        """
        import sys
        for i in range(1000):
            print(f"out {i}", flush=True)
            print(f"err {i}", file=sys.stderr, flush=True)
        """,
    )
    r = run("talk.py", monitor=False)
    expected = [f"{s} {i}" for i in range(1000) for s in ("out", "err")]
    assert r.log_path.read_text().splitlines() == expected
    shown = [line for line in capsys.readouterr().out.splitlines() if line[:4] in ("out ", "err ")]
    assert shown == expected


def test_carriage_return_progress_stays_on_one_line(proj, capsys, monkeypatch):
    monkeypatch.setenv("COLABKIT_DISPLAY", "terminal")
    script(
        proj,
        "bar.py",
        """
        import sys
        print("begin")
        for i in range(3000):
            sys.stderr.write(f"\\r{i:5d}/2999 |" + "#" * (i // 300))
        sys.stderr.write("\\n")
        print("end")
        """,
    )
    r = run("bar.py", monitor=False)
    log = r.log_path.read_bytes().decode()
    assert log.count("\r") == 3000  # the log keeps every update
    raw = capsys.readouterr().out
    assert raw.count("/2999 |") < 100  # the screen got a handful of redraws, not 3000 lines
    visible = screen(raw)
    assert "begin" in visible and "end" in visible
    assert " 2999/2999 |#########" in visible
    assert not any("/2999 |" in line and "2999/2999" not in line for line in visible)


def test_a_flood_of_lines_is_throttled_and_the_log_keeps_everything(proj, capsys):
    script(
        proj,
        "flood.py",
        "import sys\nw = sys.stdout.write\nfor i in range(100_000):\n    w(f'line {i}\\n')\n",
    )
    t0 = time.monotonic()
    r = run("flood.py", monitor=False)
    elapsed = time.monotonic() - t0
    lines = r.log_path.read_text().splitlines()
    assert len(lines) == 100_000 and lines[0] == "line 0" and lines[-1] == "line 99999"
    out = capsys.readouterr().out.splitlines()
    assert len(out) < 3000
    assert any(line.startswith("... ") and line.endswith(" lines not shown, see output.log") for line in out)
    assert "line 99999" in out  # the end is always shown
    assert elapsed < 20


def test_non_zero_exit_raises_run_failed_with_the_stderr_tail(proj):
    script(
        proj,
        "bad.py",
        """
        import sys
        for i in range(30):
            print(f"warning {i}", file=sys.stderr)
        def load():
            raise FileNotFoundError("data/train.csv")
        load()
        """,
    )
    with pytest.raises(RunFailed, match=r"bad\.py exited with exit status 1; last lines of its output:") as info:
        run("bad.py", interval=0.05)
    err = info.value
    assert type(err) is RunFailed
    assert err.returncode == 1
    tail = err.stderr_tail.splitlines()
    assert len(tail) == 20 and tail[-1] == "FileNotFoundError: data/train.csv"
    assert 'bad.py", line 6, in load' in err.stderr_tail
    assert "colabkit" not in err.stderr_tail  # no bootstrap frames in the traceback
    assert err.log_path == str(only_run_dir(proj) / "output.log")
    assert err.hint == f"Fix the error shown above and run again; the full output is in {err.log_path}"
    assert err.result.status == "failed"
    assert json.loads((only_run_dir(proj) / "summary.json").read_text())["status"] == "failed"


def test_check_false_returns_the_result_and_check_raises(proj):
    script(proj, "three.py", "import sys\nsys.exit(3)\n")
    r = run("three.py", check=False, monitor=False)
    assert (r.status, r.returncode) == ("failed", 3)
    with pytest.raises(RunFailed, match="three.py exited with exit status 3 and wrote no output"):
        r.check()


def test_death_by_signal_is_named(proj):
    script(proj, "die.py", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(RunFailed, match="die.py exited with signal SIGKILL") as info:
        run("die.py", monitor=False)
    assert info.value.returncode == -9


def test_cuda_out_of_memory_is_recognised(proj):
    script(
        proj,
        "oom.py",
        """
        import sys
        sys.stderr.write("Traceback (most recent call last):\\n  File \\"oom.py\\", line 9, in <module>\\n")
        sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                         "capacity of 14.75 GiB of which 1.06 GiB is free.\\n")
        sys.exit(1)
        """,
    )
    with pytest.raises(CudaOutOfMemory) as info:
        run("oom.py", interval=0.05)
    err = info.value
    assert isinstance(err, RunFailed) and err.returncode == 1
    assert str(err).startswith(
        "oom.py ran out of GPU memory (PyTorch): peak seen n/a of n/a, failed allocating 2.0 GiB more\n"
    )
    assert err.peak_bytes is None and err.total_bytes is None  # no GPU here: nothing seen
    assert err.hint.startswith("To fit in memory: halve the batch size")
    assert "expandable_segments:True" in err.hint and "gradient checkpointing" in err.hint
    assert "CUDA out of memory" in err.stderr_tail


def test_timeout_stops_the_group_and_says_interrupted(proj):
    script(proj, "forever.py", "import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.05)\n")
    with pytest.raises(RunFailed, match=r"forever\.py was stopped by timeout=0\.5s after") as info:
        run("forever.py", timeout=0.5, interval=0.05)
    err = info.value
    assert err.hint.startswith("Pass a larger timeout= (or timeout=None) to run()")
    assert err.result.status == "interrupted" and err.returncode == -2  # SIGINT ended it
    summary = json.loads((only_run_dir(proj) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["returncode"] == -2
    assert _procs.group_members(summary["pid"]) == []
    log = err.result.log_path.read_text()
    assert log.startswith("ready\n") and "[colabkit] run interrupted (timeout)" in log
    assert "KeyboardInterrupt" in log


def test_timeout_is_said_with_the_steps_and_counted_down_on_the_status_line(proj, capsys):
    script(
        proj,
        "deaf.py",
        """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    statuses = []
    r = go(
        "deaf.py", timeout=0.5, check=False, monitor=False,
        stop=StopTimes(int_grace=1.0), observer=lambda state: statuses.append(state.status_text),
    )  # fmt: skip
    assert (r.status, r.reason, r.returncode) == ("interrupted", "timeout", -15)
    said = "timeout of 0.5s reached: sent SIGINT; SIGTERM in 1s, then SIGKILL 5s later unless the script exits"
    assert f"colabkit: {said}" in capsys.readouterr().out.splitlines()
    assert f"[colabkit] {said}" in r.log_path.read_text().splitlines()
    countdown = [s.split(" · ", 1)[1] for s in statuses if " · " in s]
    assert any(re.fullmatch(r"SIGINT sent, SIGTERM in \d\.\ds", c) for c in countdown), countdown
    assert all(re.fullmatch(r"(SIGINT sent, SIGTERM|SIGTERM sent, SIGKILL) in \d\.\ds", c) for c in countdown)


def test_run_and_its_spec_agree_on_every_default():
    import inspect

    params = inspect.signature(run).parameters
    options = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert RunSpec.build("x.py", (), **options) == RunSpec.build("x.py")  # run()'s defaults are the spec's
    spec_fields = {f.name for f in __import__("dataclasses").fields(RunSpec)}
    # the spec's own: the stop sequence's waits, the clock, a test's observer, the heartbeat, which surface built it
    assert set(options) == spec_fields - {"script", "args", "stop", "clock", "observer", "heartbeat_s", "surface"}
    with pytest.raises(TypeError, match="unexpected keyword arguments: colour"):
        RunSpec.build("x.py", colour="red")


def test_script_arguments_given_as_a_list_are_refused_with_the_spelling_that_works(proj):
    (proj / "t.py").write_text("open('ran', 'w').write('yes')\n")
    with pytest.raises(TypeError) as info:
        run("t.py", ["--epochs", "3"])
    assert str(info.value) == (
        "run() takes the script's arguments one by one, not as a list (['--epochs', '3']): "
        "write run('t.py', '--epochs', '3'), or run('t.py', *args) for a list"
    )
    assert not (proj / "ran").exists() and not (proj / "runs").exists()
    assert RunSpec.build("t.py", ("--epochs", 3)).args == ("--epochs", "3")  # numbers are written out as text


def test_status_text_counts_down_to_the_next_signal():
    def countdown(elapsed, reason, step, due):
        return _loop.countdown(elapsed, reason=reason, step=step, due=due, budget=None, term_sent=None)

    assert countdown(3.0, None, None, None) == ""
    assert countdown(3.0, "timeout", "int", 10.5) == " · SIGINT sent, SIGTERM in 7.5s"
    assert countdown(11.0, "timeout", "term", 12.0) == " · SIGTERM sent, SIGKILL in 1.0s"
    assert countdown(13.0, "interrupt", "kill", 18.0) == " · SIGKILL sent"


def test_cli_run_explains_an_out_of_memory_crash(proj, capsys):
    script(
        proj,
        "oom.py",
        """
        import sys
        sys.stderr.write("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\\n")
        sys.exit(1)
        """,
    )
    assert cli.main(["run", "--no-monitor", "oom.py"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "colabkit run: oom.py ran out of GPU memory (PyTorch): peak seen n/a of n/a, failed allocating 2.0 GiB more",
        "HINT: To fit in memory: " + _oom.advice("pytorch"),
    ]


def test_cli_run_explains_a_timeout(proj, capsys):
    script(proj, "forever.py", "import time\nwhile True:\n    time.sleep(0.05)\n")
    assert cli.main(["run", "--no-monitor", "--timeout", "0.5", "forever.py"]) == 124  # as timeout(1) says it
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert re.fullmatch(r"colabkit run: forever\.py was stopped by --timeout 0\.5s after \d+\.\ds", err[0]), err
    log = only_run_dir(proj) / "output.log"
    assert err[1] == f"HINT: Pass a larger --timeout (or none); the output so far is in {log}"


def test_cli_run_says_nothing_more_when_the_run_finished(proj, capsys):
    script(proj, "ok.py", "print('fine')\n")
    assert cli.main(["run", "--no-monitor", "ok.py"]) == 0
    assert capsys.readouterr().err == ""


def test_a_child_that_ignores_sigint_and_sigterm_is_killed(proj):
    script(
        proj,
        "stubborn.py",
        """
        import signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    r = go("stubborn.py", timeout=0.3, check=False, monitor=False, stop=StopTimes(int_grace=0.3, term_grace=0.3))
    assert (r.status, r.returncode, r.reason) == ("interrupted", -9, "timeout")
    assert _procs.group_members(json.loads((r.log_dir / "summary.json").read_text())["pid"]) == []


def test_keyboard_interrupt_ends_the_whole_group_including_grandchildren(proj):
    script(
        proj,
        "parent.py",
        """
        import subprocess, sys, time
        # the grandchild ignores SIGINT: only the SIGTERM that follows ends it
        kid = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('kid up', flush=True); time.sleep(60)"])
        time.sleep(0.01)
        print(f"grandchild {kid.pid}", flush=True)
        while True:
            time.sleep(0.05)
        """,
    )
    state_seen = {}

    def hook(state):
        if "kid up" in state.seen and "grandchild " in state.seen and "pid" not in state_seen:
            state_seen["pid"] = state.pid
            state_seen["kid"] = int(state.seen.split("grandchild ")[1].split()[0])
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        go("parent.py", interval=0.05, stop=StopTimes(int_grace=0.5), observer=hook)
    assert _procs.group_members(state_seen["pid"]) == []
    kid = state_seen["kid"]
    assert not psutil.pid_exists(kid) or psutil.Process(kid).status() == psutil.STATUS_ZOMBIE
    run_dir = only_run_dir(proj)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["ended"] is not None
    assert "[colabkit] run interrupted (interrupt)" in (run_dir / "output.log").read_text()


def test_leftover_processes_after_a_normal_exit_are_ended(proj, monkeypatch):
    script(
        proj,
        "leaves.py",
        """
        import subprocess, sys
        kid = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"grandchild {kid.pid}", flush=True)
        """,
    )
    r = go("leaves.py", monitor=False, stop=StopTimes(pipe_grace=0.2))
    assert r.status == "finished"
    log = r.log_path.read_text()
    kid = int(log.split("grandchild ")[1].split()[0])
    assert "[colabkit] ending 1 leftover process(es) of the run" in log
    assert not psutil.pid_exists(kid) or psutil.Process(kid).status() == psutil.STATUS_ZOMBIE


def test_a_folder_given_as_the_script_is_said_to_be_one(proj):
    (proj / "pkg").mkdir()
    script(proj / "pkg", "train.py", "")
    with pytest.raises(ScriptNotFound) as info:
        run("pkg")
    assert info.value.message == f"{proj / 'pkg'} is a folder, not a script"
    assert info.value.hint == f"Pass the .py file to run: {proj / 'pkg'} holds train.py."
    assert not (proj / "runs").exists()


def test_missing_script_is_named_with_the_folder_contents(proj):
    script(proj, "train.py", "")
    with pytest.raises(ScriptNotFound, match=r"script not found: .*/proj/tain\.py") as info:
        run("tain.py")
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.path == str(proj / "tain.py")
    assert f"{proj} holds train.py" in info.value.hint
    assert info.value.hint.endswith("Open the project first (colabkit.project('NAME')) or pass cwd= or an absolute path.")
    assert info.value.cli_hint.endswith(
        "cd into the project folder or give the script's full path (colabkit run /path/to/train.py)."
    )
    assert not (proj / "runs").exists()


def test_cwd_env_and_the_child_environment(proj, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    script(
        other,
        "env.py",
        """
        import json, os
        print(json.dumps({k: os.environ.get(k) for k in ("PYTHONUNBUFFERED", "MPLBACKEND", "LR", "COLABKIT_CHILD_REPORT")}))
        print(os.getcwd())
        """,
    )
    r = run("env.py", cwd=other, env={"LR": "0.1"}, monitor=False)
    first, cwd = r.log_path.read_text().splitlines()
    assert json.loads(first) == {
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
        "LR": "0.1",
        "COLABKIT_CHILD_REPORT": None,
    }
    assert cwd == str(other)
    assert r.log_dir.parent == other / "runs"


def test_raw_runs_the_script_without_the_bootstrap(proj):
    script(proj, "which.py", "import sys\nprint('colabkit' in sys.modules)\n")
    assert run("which.py", monitor=False).log_path.read_text() == "True\n"
    assert run("which.py", monitor=False, raw=True).log_path.read_text() == "False\n"


def test_framework_peak_comes_from_the_childs_report(proj, monkeypatch):
    (proj / "torch.py").write_text(
        textwrap.dedent(
            """
            class cuda:
                is_initialized = staticmethod(lambda: True)
                device_count = staticmethod(lambda: 1)
                max_memory_allocated = staticmethod(lambda i: 3 * 1024**3)
                max_memory_reserved = staticmethod(lambda i: 4 * 1024**3)
            """
        )
    )
    script(proj, "t.py", "import torch\n")
    r = run("t.py", interval=0.05)
    assert (r.framework_peak_bytes, r.framework_reserved_bytes) == (3 * GIB, 4 * GIB)
    assert json.loads((r.log_dir / "summary.json").read_text())["framework_peak_bytes"] == 3 * GIB
    assert "torch peak: 3.0 GiB allocated, 4.0 GiB reserved" in r.summary()
    assert not list(r.log_dir.glob(".framework*"))


def test_release_runs_whatever_the_outcome(proj, monkeypatch):
    calls = []
    from colabkit import _release

    monkeypatch.setattr(_release, "release", lambda: calls.append("release"))
    script(proj, "ok.py", "")
    script(proj, "fail.py", "raise SystemExit(2)")
    run("ok.py", monitor=False, release=True)
    assert calls == ["release"]
    with pytest.raises(RunFailed):
        run("fail.py", monitor=False, release=True)
    assert calls == ["release", "release"]


def test_when_release_fails_after_a_failed_run_the_run_failure_is_raised(proj, monkeypatch, capsys):
    from colabkit import _release
    from colabkit.errors import ReleaseError

    def broken_release():
        raise ReleaseError("Colab could not give the runtime back", "Use Runtime → Disconnect and delete runtime.")

    monkeypatch.setattr(_release, "release", broken_release)
    script(proj, "fail.py", "raise SystemExit(2)")
    with pytest.raises(RunFailed) as info:
        run("fail.py", monitor=False, release=True)
    assert info.value.returncode == 2  # the script's failure, not the release's
    assert "colabkit: release failed too: Colab could not give the runtime back" in capsys.readouterr().out
    script(proj, "ok.py", "")
    with pytest.raises(ReleaseError, match="could not give the runtime back"):
        run("ok.py", monitor=False, release=True)  # the run finished: the release's failure is the news


@pytest.fixture
def stale(proj):
    """A process left by an 'earlier run': its own group, recorded in a run folder's summary.json."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    run_dir = proj / "runs" / "20200101-000000-old"
    run_dir.mkdir(parents=True)
    summary = {
        "schema": 1, "status": "running", "script": "old.py", "args": [], "pid": proc.pid,
        "pid_create_time": psutil.Process(proc.pid).create_time(), "boot_id": _runtime.boot_id(),
    }  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_stale_processes_of_earlier_runs_are_reported(proj, stale, capsys):
    script(proj, "new.py", "")
    run("new.py", monitor=False)
    out = capsys.readouterr().out
    assert f"colabkit: pid {stale.pid} from the earlier run 20200101-000000-old is still running" in out
    assert (
        "colabkit: pass kill_stale=True to run() (--kill-stale on the command line) to end these processes first"
        in out
    )
    assert stale.poll() is None


def test_kill_stale_ends_only_processes_of_earlier_runs(proj, stale, capsys):
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        # a run folder that points at a recycled pid (other create time) must not be touched
        fake = proj / "runs" / "20200101-000001-recycled"
        fake.mkdir()
        ctime = psutil.Process(bystander.pid).create_time() - 1000
        (fake / "summary.json").write_text(
            json.dumps({"pid": bystander.pid, "pid_create_time": ctime, "boot_id": ""})
        )
        script(proj, "new.py", "")
        run("new.py", monitor=False, kill_stale=True)
        stale.wait(10)  # reaped by the check already (it is our child here), so only its absence tells
        assert not psutil.pid_exists(stale.pid)
        assert bystander.poll() is None
        assert "colabkit: ended 1 process(es) left by earlier runs" in capsys.readouterr().out
    finally:
        bystander.kill()
        bystander.wait()


def test_the_kernel_and_its_ancestors_are_protected():
    protected = _procs.protected_pids()
    assert os.getpid() in protected and os.getppid() in protected and 1 in protected


def test_cli_run_exits_with_the_childs_status(proj, capsys):
    script(proj, "five.py", "import sys\nprint(sys.argv[1:])\nsys.exit(5)\n")
    assert cli.main(["run", "--no-monitor", "five.py", "--lr", "3"]) == 5
    assert "['--lr', '3']" in capsys.readouterr().out


def test_interval_below_the_minimum_is_refused(proj):
    script(proj, "x.py", "")
    with pytest.raises(ValueError, match="interval=0.01 is too short"):
        run("x.py", interval=0.01)


def test_plot_without_matplotlib_says_how_to_install(proj, monkeypatch):
    script(proj, "x.py", "")
    r = run("x.py", interval=0.05)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(
        ImportError, match=r"needs matplotlib, which is not installed: run `pip install matplotlib`"
    ) as info:
        r.plot()
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.gpu
def test_torch_child_peak_matches_torch_and_nvml_sees_at_least_that(proj):
    pytest.importorskip("torch")
    script(
        proj,
        "alloc.py",
        """
        import torch
        x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")   # 2 GiB
        y = torch.empty(1024**3, dtype=torch.uint8, device="cuda")       # +1 GiB: peak 3 GiB
        del y
        torch.cuda.synchronize()
        import time; time.sleep(1.0)
        """,
    )
    r = run("alloc.py", interval=0.1)
    assert r.framework_peak_bytes == pytest.approx(3 * GIB, rel=0.01)
    assert r.stats.peak_used_bytes >= r.framework_peak_bytes
    assert r.attribution in ("pid", "new-pids")  # baseline would count other processes too
    assert r.stats.child_peak_gpu_bytes >= 2 * GIB


def test_plot_draws_memory_and_utilisation(tmp_path):
    pytest.importorskip("matplotlib")
    from colabkit._monitor import Sample

    samples = tuple(
        Sample(
            t=float(i),
            used=(i * GIB, None if i == 3 else GIB),
            total=(16 * GIB, 16 * GIB),
            util=(10 * i, None),
            temp=(60, 61),
            power_w=(70.0, None),
            child_gpu_bytes=i * GIB,
            child_rss_bytes=GIB,
            attribution="pid",
        )
        for i in range(6)
    )
    r = RunResult(
        returncode=0,
        status="finished",
        duration_s=5.0,
        log_dir=tmp_path,
        log_path=tmp_path / "output.log",
        samples=samples,
        script="t.py",
    )
    path = r.plot()
    assert path == tmp_path / "gpu.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = r.plot(tmp_path / "other.png")
    assert other.stat().st_size > 1000


# -- errors inside run() never leave the child running ---------------------------------------------
def test_stop_while_the_summary_with_the_pid_is_written_ends_the_group(proj, monkeypatch):
    """Promise: Stop at any moment after the script started leaves none of its processes."""
    script(proj, "forever.py", "import time\nwhile True:\n    time.sleep(0.05)\n")
    real = _files.write_json
    calls = []

    def write_json(path, data, **kwargs):
        if path.name == "summary.json":
            calls.append(dict(data))
            if data.get("pid") is not None and len(calls) == 2:
                raise KeyboardInterrupt  # Stop pressed while summary.json goes to Drive
        real(path, data, **kwargs)

    monkeypatch.setattr(_files, "write_json", write_json)
    with pytest.raises(KeyboardInterrupt):
        run("forever.py", interval=0.05)
    pid = calls[1]["pid"]
    assert _procs.group_members(pid) == []
    assert not psutil.Process().children(recursive=True)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("colabkit")]
    summary = json.loads((only_run_dir(proj) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and isinstance(summary["returncode"], int) and summary["ended"]
    assert "[colabkit] run interrupted (interrupt)" in (only_run_dir(proj) / "output.log").read_text()


def test_stop_before_the_script_starts_starts_nothing_and_leaves_no_run_folder(proj, monkeypatch):
    """Promise: a run stopped while its folder is prepared never starts the script."""
    script(proj, "marker.py", "open('started', 'w').close()\n")

    def write_json(path, data, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_files, "write_json", write_json)
    with pytest.raises(KeyboardInterrupt):
        run("marker.py", monitor=False)
    assert list((proj / "runs").iterdir()) == []
    assert not (proj / "started").exists()


def test_an_error_inside_the_loop_ends_the_group_and_is_raised(proj, monkeypatch):
    script(proj, "forever.py", "import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.05)\n")
    seen = {}

    def hook(state):
        if "ready" in state.seen:
            seen["pid"] = state.pid
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    with pytest.raises(OSError, match="Transport endpoint is not connected"):
        go("forever.py", interval=0.05, observer=hook)
    assert _procs.group_members(seen["pid"]) == []
    assert not [t.name for t in threading.enumerate() if t.name.startswith("colabkit")]
    summary = json.loads((only_run_dir(proj) / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["returncode"] == -2


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_descendants_that_left_the_group_with_setsid_are_ended_too(proj):
    script(
        proj,
        "escape.py",
        """
        import subprocess, sys, time
        code = "import os, time; os.setsid(); print(f'gc up {os.getpid()}', flush=True); time.sleep(60)"
        subprocess.Popen([sys.executable, "-c", code])
        while True:
            time.sleep(0.05)
        """,
    )
    seen = {}

    def hook(state):
        found = re.search(r"gc up (\d+)\n", state.seen)
        if found and "gc" not in seen:
            seen["gc"] = int(found.group(1))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        go("escape.py", monitor=False, stop=StopTimes(int_grace=1.0), observer=hook)
    gc = seen["gc"]
    survived = running(gc)
    if survived:
        os.kill(gc, signal.SIGKILL)
    assert not survived, f"the grandchild {gc} that called setsid outlived the run"


def test_secret_arguments_are_redacted_everywhere_but_the_child_gets_them(proj, capsys):
    script(
        proj,
        "key.py",
        "import pathlib, sys\npathlib.Path('argv.txt').write_text(repr(sys.argv[1:]))\nprint('ok')\n",
    )
    r = run("key.py", "--api-key", "sk-123", "--token=abc", "--lr", "3", monitor=False)
    assert (proj / "argv.txt").read_text() == repr(["--api-key", "sk-123", "--token=abc", "--lr", "3"])
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert summary["args"] == ["--api-key", "***", "--token=***", "--lr", "3"]
    assert r.args == ("--api-key", "***", "--token=***", "--lr", "3")
    everything = capsys.readouterr().out + r.log_path.read_text() + repr(r) + r.summary()
    assert "sk-123" not in everything and "abc" not in everything


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--api-key", "X", "--epochs", "3"], ["--api-key", "***", "--epochs", "3"]),
        (["--token=X", "--hf_token", "Y"], ["--token=***", "--hf_token", "***"]),
        (
            ["--SECRET", "s", "--password=p", "--db-passwd", "k", "--aws-credentials", "c"],
            ["--SECRET", "***", "--password=***", "--db-passwd", "***", "--aws-credentials", "***"],
        ),
        (["--keep-going", "train.csv"], ["--keep-going", "train.csv"]),
        (["--api-key", "--verbose"], ["--api-key", "--verbose"]),
        # Hydra / OmegaConf overrides, by the words of the name only
        (
            ["api_key=sk-1", "wandb.api_key=k2", "+hf_token=t", "trainer.lr=3e-4", "model.name=bert"],
            ["api_key=***", "wandb.api_key=***", "+hf_token=***", "trainer.lr=3e-4", "model.name=bert"],
        ),
        (["hfToken=x", "db.userPassword=y", "--apiKey", "z"], ["hfToken=***", "db.userPassword=***", "--apiKey", "***"]),
        # harmless names that only contain a secret word's letters stay as they are
        (
            ["--max-tokens", "512", "--num_tokens=8", "tokenizer=bpe", "--keyframes", "4", "--key", "id", "monkey=1"],
            ["--max-tokens", "512", "--num_tokens=8", "tokenizer=bpe", "--keyframes", "4", "--key", "id", "monkey=1"],
        ),
    ],
)
def test_redact(args, shown):
    assert redact(args) == shown


def test_kill_stale_leaves_a_run_whose_launcher_is_still_alive(proj, stale, capsys):
    # another notebook (or `colabkit run` in a terminal) is still running that run
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        summary_path = proj / "runs" / "20200101-000000-old" / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary["launcher_pid"] = launcher.pid
        summary["launcher_create_time"] = psutil.Process(launcher.pid).create_time()
        summary_path.write_text(json.dumps(summary))
        script(proj, "new.py", "")
        run("new.py", monitor=False, kill_stale=True)
        out = capsys.readouterr().out
        assert (
            f"colabkit: pid {stale.pid} is in use by run 20200101-000000-old (launcher pid {launcher.pid}); "
            "left alone: " in out
        )
        assert "ended" not in out and "pass kill_stale=True" not in out
        assert stale.poll() is None
        # once the launcher is gone the same group is stale
        launcher.kill()
        launcher.wait()
        run("new.py", monitor=False, kill_stale=True)
        stale.wait(10)
        assert "colabkit: ended 1 process(es) left by earlier runs" in capsys.readouterr().out
    finally:
        launcher.kill()
        launcher.wait()


def test_stale_reports_redact_secret_arguments(proj, capsys):
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--api-key", "sk-123"], start_new_session=True
    )
    try:
        run_dir = proj / "runs" / "20200101-000000-old"
        run_dir.mkdir(parents=True)
        summary = {"pid": proc.pid, "pid_create_time": psutil.Process(proc.pid).create_time(), "boot_id": ""}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        script(proj, "new.py", "")
        run("new.py", monitor=False)
        out = capsys.readouterr().out
        assert f"colabkit: pid {proc.pid} from the earlier run 20200101-000000-old is still running" in out
        assert "--api-key ***" in out and "sk-123" not in out
    finally:
        proc.kill()
        proc.wait()


def test_an_error_before_the_process_tree_is_known_still_ends_the_child(proj, monkeypatch):
    script(proj, "forever.py", "import time\nwhile True:\n    time.sleep(0.05)\n")
    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc.pid)
        return proc

    def broken_tree(pgid, root=None):
        raise RuntimeError("psutil unavailable")

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(_run, "Tree", broken_tree)
    with pytest.raises(RuntimeError, match="psutil unavailable"):
        run("forever.py", monitor=False)
    assert started and _procs.group_members(started[0]) == []
    assert not psutil.Process().children(recursive=True)


# -- the launcher dies -------------------------------------------------------------------------------
FOREVER = """
import os, signal, sys, time
if "--stubborn" in sys.argv:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open("child.pid.tmp", "w") as fh:
    fh.write(str(os.getpid()))
os.replace("child.pid.tmp", "child.pid")
while True:
    time.sleep(0.05)
"""


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the launcher exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
    return path.read_text()


def wait_group_gone(pgid: int, timeout: float) -> float:
    """Seconds until the group has no live member; fails after ``timeout``."""
    start = time.monotonic()
    while _procs.group_members(pgid):
        assert time.monotonic() - start < timeout, f"group {pgid} still has {_procs.group_members(pgid)}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_colabkit_run_under_nohup_keeps_sighup_ignored(proj):
    from conftest import child_env

    script(
        proj,
        "waits.py",
        """
        import os, time
        with open("child.pid.tmp", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace("child.pid.tmp", "child.pid")
        while not os.path.exists("go"):
            time.sleep(0.02)
        print("done")
        """,
    )
    cmd = subprocess.Popen(
        ["nohup", sys.executable, "-m", "colabkit", "run", "--no-monitor", "waits.py"],
        cwd=proj,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pgid = None
    try:
        pgid = int(wait_for_file(proj / "child.pid", cmd))
        status = Path(f"/proc/{cmd.pid}/status").read_text()
        ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        assert ignored & (1 << (signal.SIGHUP - 1)), "colabkit run took over the SIGHUP that nohup ignores"
        cmd.send_signal(signal.SIGHUP)  # the terminal closed
        (proj / "go").touch()
        out, err = cmd.communicate(timeout=15)
        assert cmd.returncode == 0, out + err
        assert "done" in out
        summary = json.loads((only_run_dir(proj) / "summary.json").read_text())
        assert (summary["status"], summary["reason"]) == ("finished", None)
    finally:
        if cmd.poll() is None:
            cmd.kill()
            cmd.communicate()
        if pgid is not None:
            _stop.signal_group(pgid, signal.SIGKILL)


def test_sigterm_to_colabkit_run_stops_the_run_and_its_group(proj):
    from conftest import child_env

    script(proj, "forever.py", FOREVER)
    cmd = subprocess.Popen(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "forever.py"],
        cwd=proj,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pgid = None
    try:
        pgid = int(wait_for_file(proj / "child.pid", cmd))
        cmd.send_signal(signal.SIGTERM)
        out, err = cmd.communicate(timeout=15)
        assert cmd.returncode == 130, out + err
        assert _procs.group_members(pgid) == []
        assert err.splitlines()[-1] == "colabkit run: interrupted"
        summary = json.loads((only_run_dir(proj) / "summary.json").read_text())
        assert (summary["status"], summary["reason"], summary["returncode"]) == ("interrupted", "interrupt", -2)
    finally:
        if cmd.poll() is None:
            cmd.kill()
            cmd.communicate()
        if pgid is not None:
            _stop.signal_group(pgid, signal.SIGKILL)


def test_a_screen_pipe_closed_early_does_not_cost_the_run(proj):
    from conftest import child_env

    script(
        proj,
        "hi.py",
        """
        import os, time
        print("first", flush=True)
        while not os.path.exists("go"):  # the test closed its end of the pipe
            time.sleep(0.01)
        for i in range(5000):
            print(f"line {i}", flush=True)
        """,
    )
    cmd = subprocess.Popen(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "hi.py"],
        cwd=proj,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines = []
        while b"first\n" not in lines:
            line = cmd.stdout.readline()
            assert line, "colabkit run ended before the script printed"
            lines.append(line)
        cmd.stdout.close()  # like `colabkit run hi.py | head -1`
        (proj / "go").touch()
        err = cmd.stderr.read().decode()
        assert cmd.wait(timeout=30) == 0, err
    finally:
        if cmd.poll() is None:
            cmd.kill()
            cmd.wait()
        cmd.stdout.close()
        cmd.stderr.close()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    run_dir = only_run_dir(proj)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["returncode"]) == ("finished", 0)
    assert (run_dir / "output.log").read_text().splitlines() == ["first", *(f"line {i}" for i in range(5000))]


@pytest.fixture(params=["chmod", "monkeypatch"])
def read_only_proj(request, proj, monkeypatch):
    """The project folder cannot be written: by its mode, or (as root, which ignores modes) by a patched mkdir."""
    if request.param == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores chmod 555")
        proj.chmod(0o555)
        yield proj
        proj.chmod(0o755)
        return
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(proj):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    yield proj


def test_a_read_only_project_folder_names_the_folder_and_log_dir(read_only_proj, capsys):
    script(read_only_proj, "train.py", "print('hi')\n")
    with pytest.raises(ColabkitError) as info:
        run("train.py", monitor=False)
    err = info.value
    root = read_only_proj / "runs"
    assert err.message == f"cannot create a run folder in {root}: Permission denied"
    assert err.hint == "Pass log_dir= a writable folder, e.g. run(..., log_dir='~/runs')"  # not on Colab: no /content
    capsys.readouterr()
    assert cli.main(["run", "--no-monitor", "train.py"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"colabkit run: cannot create a run folder in {root}: Permission denied",
        "HINT: Pass --log-dir a writable folder: colabkit run --log-dir ~/runs ...",
    ]


def test_the_cli_turns_any_os_error_into_one_line(proj, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", "/content/drive/MyDrive/x")

    monkeypatch.setattr(_run, "execute", broken)
    assert cli.main(["run", "train.py"]) == 1
    err = capsys.readouterr().err
    assert err == "colabkit run: [Errno 5] Input/output error: '/content/drive/MyDrive/x'\n"


def test_run_folder_names_keep_only_safe_characters_of_the_script_name(proj):
    script(proj, "my train (v2).py", "")
    r = run("my train (v2).py", monitor=False)
    assert re.fullmatch(r"\d{8}-\d{6}-my_train__v2_", r.log_dir.name)


def test_an_interpreter_that_cannot_start_is_named_and_nothing_is_left(proj):
    """Promise: a ``python=`` that does not exist gives one clear error, the run is recorded as failed, and
    neither the supervisor nor anything else stays behind."""
    script(proj, "x.py", "print('never')\n")
    with pytest.raises(ColabkitError) as info:
        run("x.py", python=str(proj / "no-such-python"), monitor=False)
    assert info.value.message == f"could not start {str(proj / 'no-such-python')!r}: No such file or directory"
    assert info.value.hint.startswith("Pass python=None to use this kernel's interpreter")
    summary = json.loads((only_run_dir(proj) / "summary.json").read_text())
    assert (summary["status"], summary["pid"]) == ("failed", None)
    assert not psutil.Process().children(recursive=True)
