"""run() under process faults, with real children and signals: the launcher SIGKILLed while the script prints,
during a long save, processes that leave the tree, an inherited ignored SIGINT, and endings said truly.

Each test states the promise it holds in its docstring.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import child_env, script

from colabkit import _run, cli
from colabkit._spec import RunSpec
from colabkit._stop import StopTimes
from colabkit._summary import RunSummary
from colabkit.errors import CudaOutOfMemory, RunFailed


def go(name: str, *args, stop: StopTimes | None = None, observer=None, **options):
    return _run.execute(RunSpec.build(name, args, stop=stop, observer=observer, **options))


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(path: Path, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> str:
    """The text of ``path`` once it exists (written atomically by the script)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None:
            assert proc.poll() is None, f"the launcher exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)
    return path.read_text()


def seconds_until_gone(pids: list[int], timeout: float) -> float:
    start = time.monotonic()
    while any(running(p) for p in pids):
        assert time.monotonic() - start < timeout, f"still running: {[p for p in pids if running(p)]}"
        time.sleep(0.01)
    return time.monotonic() - start


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def only_run_dir(folder: Path) -> Path:
    (run_dir,) = (folder / "runs").iterdir()
    return run_dir


def launcher(proj: Path, code: str, **popen) -> subprocess.Popen:
    """A process that calls run(), like a notebook kernel or ``colabkit run`` does."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=proj,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **popen,
    )


# the script keeps printing every 20 ms and holds a helper in its group and one in a session of its own
CHATTY = """
import json, os, subprocess, sys, time
stubborn = "--stubborn" in sys.argv
if stubborn:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
alone = subprocess.Popen(["sleep", "300"], start_new_session=True)
with open("pids.tmp", "w") as fh:
    json.dump({"script": os.getpid(), "group": group.pid, "alone": alone.pid}, fh)
os.replace("pids.tmp", "pids.json")
n = 0
try:
    while True:
        print(f"step {n}", flush=True)
        n += 1
        time.sleep(0.02)
except KeyboardInterrupt:
    print("saved on KeyboardInterrupt", flush=True)
"""


# -- 1. the launcher dies while the script prints ------------------------------------------------------
@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "ignores-sigint-and-sigterm"])
def test_sigkill_of_the_launcher_while_the_script_prints_ends_the_whole_run(proj, stubborn):
    """Promise: when the process that called run() is SIGKILLed, every process of the run ends within 2 s
    of the stop sequence's waits, the script is never killed by a broken pipe first (its KeyboardInterrupt
    handler runs), output.log keeps what it printed meanwhile, and the run's ending is recorded."""
    script(proj, "chatty.py", CHATTY)
    extra = ", '--stubborn'" if stubborn else ""
    proc = launcher(
        proj,
        f"""
        from colabkit import _run
        from colabkit._spec import RunSpec
        from colabkit._stop import StopTimes
        _run.execute(RunSpec.build("chatty.py", ["x"{extra}], monitor=False, check=False,
                                   stop=StopTimes(int_grace=0.6, term_grace=0.6)))
        """,
    )
    pids: dict[str, int] = {}
    try:
        pids = json.loads(wait_for(proj / "pids.json", proc))
        log = only_run_dir(proj) / "output.log"
        while log.read_bytes().count(b"step ") < 30:  # it prints constantly, and output.log has it
            assert proc.poll() is None
            time.sleep(0.02)
        pids["supervisor"] = RunSummary.read(only_run_dir(proj)).supervisor_pid
        assert all(running(p) for p in pids.values())
        proc.kill()
        proc.wait()
        took = seconds_until_gone(list(pids.values()), timeout=8.0)  # the supervisor exits last
        if stubborn:  # SIGINT and SIGTERM were ignored: SIGKILL ended it once both waits were over
            assert 1.2 <= took < 1.2 + 2.0, took
        else:
            assert took < 2.0, took
        run_dir = only_run_dir(proj)
        summary = RunSummary.read(run_dir)
        assert (summary.status, summary.reason) == ("interrupted", "launcher")
        assert summary.returncode == (-9 if stubborn else 0)
        text = log.read_text()
        assert "BrokenPipeError" not in text
        assert "[colabkit] the process that started the run (pid " in text
        assert "sent SIGINT; SIGTERM in 0.6s, then SIGKILL 0.6s later" in text
        if not stubborn:
            assert text.index("[colabkit] the process that started") < text.index("saved on KeyboardInterrupt")
        # what the launcher had read but not yet written dies with it (at most one turn of its loop); from
        # the supervisor's note on, every line is there
        steps = [int(m) for m in re.findall(r"^step (\d+)$", text, re.M)]
        assert steps == sorted(set(steps)) and len(steps) >= 30
        if stubborn:  # it printed for 1.2 s more, into the log the supervisor kept, without a gap
            after = [int(m) for m in re.findall(r"^step (\d+)$", text.split("[colabkit] the process that started")[1], re.M)]
            assert len(after) > 20 and after == list(range(after[0], after[0] + len(after)))
        assert re.search(r"\[colabkit\] run interrupted \(launcher\) after [\d.]+s: ", text)
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"  # written back
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(pids.values())


def test_a_launcher_that_dies_before_the_script_starts_starts_nothing(proj):
    """Promise: a launcher killed while it starts the run leaves no process of the run behind."""
    script(proj, "marker.py", "import time\nopen('started', 'w').close()\ntime.sleep(300)\n")
    code = """
    import os, subprocess, colabkit
    from colabkit import _launch
    real = _launch.subprocess.Popen
    class Dying(real):
        def __init__(self, cmd, *a, **k):
            super().__init__(cmd, *a, **k)
            with open("supervisor.pid", "w") as fh:
                fh.write(str(self.pid))
            os._exit(0)  # gone right after starting the supervisor (a kernel restart at that moment)
    _launch.subprocess.Popen = Dying
    colabkit.run("marker.py", monitor=False, check=False)
    """
    proc = launcher(proj, code)
    assert proc.wait(timeout=60) == 0
    supervisor = int((proj / "supervisor.pid").read_text())
    seconds_until_gone([supervisor], timeout=10.0)
    marked = [p.pid for p in psutil.process_iter(["cmdline"]) if "marker.py" in " ".join(p.info["cmdline"] or [])]
    assert [p for p in marked if running(p)] == []


# -- 2. the launcher dies during a long save ------------------------------------------------------------
SAVER = """
import os, signal, time
got = False
def on_term(signum, frame):
    global got
    got = True
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while not got:
    time.sleep(0.01)
open("saving", "w").close()
time.sleep(float(os.environ["SAVE_S"]))  # a long save: longer than the 5 s colabkit once allowed
with open("ckpt.tmp", "w") as fh:
    fh.write("complete")
os.replace("ckpt.tmp", "ckpt")
print("saved", flush=True)
"""


@pytest.mark.parametrize(("grace", "save_s"), [(7.0, 5.6), (1.5, 30.0)], ids=["save-fits", "save-too-long"])
def test_a_launcher_killed_during_the_budgets_save_leaves_the_script_its_grace(proj, grace, save_s):
    """Promise: once the budget's SIGTERM went out, a dead launcher changes nothing: the script keeps its
    whole grace period to save (beyond 5 s too), and is SIGKILLed when the grace is over, not later."""
    script(proj, "saver.py", SAVER)
    proc = launcher(
        proj,
        f"""
        import colabkit
        colabkit.run("saver.py", budget={grace + 1.5}, grace={grace}, monitor=False, check=False,
                     env={{"SAVE_S": "{save_s}"}})
        """,
    )
    pid = None
    try:
        wait_for(proj / "saving", proc)
        sent_term = time.monotonic()  # just after the budget's SIGTERM reached the script
        started = RunSummary.read(only_run_dir(proj))
        pid = started.pid
        proc.kill()
        proc.wait()
        seconds_until_gone([pid], timeout=grace + 10)
        ended_after = time.monotonic() - sent_term
        seconds_until_gone([started.supervisor_pid], timeout=5)  # it records the ending, then exits
        summary = RunSummary.read(only_run_dir(proj))
        assert (summary.status, summary.reason) == ("stopped", "budget")
        if save_s < grace:
            assert (proj / "ckpt").read_text() == "complete"
            assert summary.returncode == 0
        else:
            assert not (proj / "ckpt").exists()
            assert summary.returncode == -9
            assert grace - 0.5 <= ended_after < grace + 2.0, ended_after
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if pid is not None:
            kill_all([pid])


# -- 3. processes that leave the tree -------------------------------------------------------------------
DAEMON = """
import os, signal, sys, time
r, w = os.pipe()
if os.fork() == 0:                      # the classic daemon: fork, setsid, fork again, the middle one exits
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # only the SIGTERM that follows ends it
        os.write(w, f"{os.getpid()}\\n".encode())
        time.sleep(300)
    os._exit(0)
daemon = int(os.read(r, 100))
print(f"daemon {daemon}", flush=True)
while True:
    time.sleep(0.05)
"""


def test_a_double_fork_setsid_daemon_is_ended_by_stop(proj):
    """Promise: Stop ends a daemon the script double-forked into a session of its own, which no process
    group and no walk of the script's children can reach (it is reparented to the run's supervisor)."""
    script(proj, "daemon.py", DAEMON)
    seen: dict[str, int] = {}

    def hook(state):
        found = re.search(r"daemon (\d+)\n", state.seen)
        if found and "daemon" not in seen:
            seen["daemon"] = int(found.group(1))
            seen["supervisor"] = state.child.proc.pid
            daemon = psutil.Process(seen["daemon"])
            deadline = time.monotonic() + 5
            while daemon.ppid() != seen["supervisor"] and time.monotonic() < deadline:
                time.sleep(0.01)  # the middle process exits right after its fork: then the daemon is adopted
            seen["parent"] = daemon.ppid()
            assert os.getsid(seen["daemon"]) != os.getsid(state.pid)  # a session of its own
            raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            go("daemon.py", monitor=False, stop=StopTimes(int_grace=0.5), observer=hook)
        assert seen["parent"] == seen["supervisor"]  # the subreaper adopted it
        assert not running(seen["daemon"])
    finally:
        kill_all([seen.get("daemon", 0)] if seen.get("daemon") else [])


def test_a_new_session_helper_started_as_the_script_exits_is_ended(proj):
    """Promise: a ``start_new_session=True`` helper started a moment before the script exits is ended
    with the run, although no walk of the tree could have seen it while the script ran."""
    script(
        proj,
        "quick.py",
        """
        import subprocess
        helper = subprocess.Popen(["sleep", "300"], start_new_session=True)
        print(f"helper {helper.pid}", flush=True)
        """,
    )
    r = go("quick.py", monitor=False, stop=StopTimes(pipe_grace=0.2))
    helper = int(re.search(r"helper (\d+)", r.log_path.read_text()).group(1))
    try:
        assert r.status == "finished"
        assert "[colabkit] ending 1 leftover process(es) of the run" in r.log_path.read_text()
        assert not running(helper)
    finally:
        kill_all([helper])


def test_the_stale_clean_up_ends_processes_that_left_the_group(proj, capsys):
    """Promise: processes an earlier run left in sessions of their own are found by the stale-process
    clean-up (through that run's supervisor) and ended by ``kill_stale=True``."""
    script(proj, "daemon.py", DAEMON.replace("while True:", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:"))
    proc = launcher(
        proj,
        """
        from colabkit import _run
        from colabkit._spec import RunSpec
        from colabkit._stop import StopTimes
        _run.execute(RunSpec.build("daemon.py", monitor=False, check=False, stop=StopTimes(int_grace=120)))
        """,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        found = None
        while found is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the daemon never started"
            time.sleep(0.05)
            for log in (proj / "runs").glob("*/output.log"):
                found = re.search(rb"daemon (\d+)\n", log.read_bytes())
        old = RunSummary.read(log.parent)
        daemon = int(found.group(1))
        pids = [old.pid, daemon, old.supervisor_pid]
        proc.kill()  # the supervisor now waits 120 s for a script that ignores SIGINT
        proc.wait()
        script(proj, "new.py", "")
        _run.run("new.py", monitor=False, kill_stale=True)
        out = capsys.readouterr().out
        assert f"colabkit: pid {daemon} from the earlier run {log.parent.name} is still running" in out
        seconds_until_gone(pids, timeout=10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(pids)


def test_the_stale_clean_up_finds_a_daemon_after_the_supervisor_was_killed_too(proj, capsys):
    """Promise: when the OOM killer (or kill -9) took the launcher and the run's supervisor, a setsid daemon the
    script left is in no tree and no group any more; it still carries the run's id and is ended."""
    script(proj, "daemon.py", DAEMON)
    proc = launcher(
        proj,
        """
        from colabkit import _run
        from colabkit._spec import RunSpec
        _run.execute(RunSpec.build("daemon.py", monitor=False, check=False))
        """,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        found = None
        while found is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the daemon never started"
            time.sleep(0.05)
            for log in (proj / "runs").glob("*/output.log"):
                found = re.search(rb"daemon (\d+)\n", log.read_bytes())
        old = RunSummary.read(log.parent)
        daemon = int(found.group(1))
        pids = [old.pid, daemon, old.supervisor_pid]
        kill_all([old.supervisor_pid, proc.pid])  # both at once: nothing is left to end the run
        proc.wait()
        seconds_until_gone([old.supervisor_pid], timeout=5.0)
        assert running(daemon) and psutil.Process(daemon).ppid() != old.supervisor_pid
        kill_all([old.pid])  # the script too (the OOM killer's next victim): only the daemon is left
        seconds_until_gone([old.pid], timeout=5.0)
        assert running(daemon)
        script(proj, "new.py", "")
        _run.run("new.py", monitor=False, kill_stale=True)
        out = capsys.readouterr().out
        assert f"colabkit: pid {daemon} from the earlier run {log.parent.name} is still running" in out
        seconds_until_gone([daemon], timeout=10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_all(pids)


def test_once_the_script_has_exited_its_leftovers_do_not_wait_out_its_grace(proj):
    """Promise: Stop gives the script its grace to save; once the script has exited, a helper that ignores
    SIGINT and SIGTERM gets the leftovers' waits (SIGTERM, then SIGKILL after term_grace), not the rest of it."""
    script(
        proj,
        "saver.py",
        """
        import subprocess, sys, time
        code = (
            "import os, signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(f'helper {os.getpid()}', flush=True); time.sleep(300)"
        )
        subprocess.Popen([sys.executable, "-c", code])  # says its pid once it ignores both signals
        try:
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            print("saved", flush=True)
        """,
    )
    seen: dict[str, int] = {}

    def hook(state):
        found = re.search(r"helper (\d+)\n", state.seen)
        if found and "helper" not in seen:
            seen["helper"] = int(found.group(1))
            raise KeyboardInterrupt

    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            go("saver.py", monitor=False, stop=StopTimes(int_grace=60.0, term_grace=1.0), observer=hook)
        took = time.monotonic() - started
        assert not running(seen["helper"])
        assert took < 30.0, took  # the script's grace was 60 s; its leftovers needed pipe_grace + term_grace
        summary = RunSummary.read(only_run_dir(proj))
        assert summary.status == "interrupted" and "saved" in (only_run_dir(proj) / "output.log").read_text()
    finally:
        kill_all([seen.get("helper", 0)] if seen.get("helper") else [])


# -- 4. an inherited ignored SIGINT ---------------------------------------------------------------------
def test_a_script_started_with_sigint_ignored_gets_it_back(proj):
    """Promise: the script starts with default SIGINT (and SIGTERM) handling even when ``colabkit run`` was
    started with them ignored (a background job of a script, ``nohup``), so the first stop signal runs its
    KeyboardInterrupt save; ``--timeout`` then exits 124."""
    script(
        proj,
        "polite.py",
        """
        import re, sys, time
        ignored = int(re.search(r"SigIgn:\\s*([0-9a-f]+)", open("/proc/self/status").read()).group(1), 16)
        print("sigint ignored:", bool(ignored & 1 << 1), "sigterm ignored:", bool(ignored & 1 << 14), flush=True)
        try:
            while True:
                time.sleep(0.02)
        except KeyboardInterrupt:
            print("saved on KeyboardInterrupt", flush=True)
            sys.exit(0)
        """,
    )

    def ignore():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    cmd = subprocess.Popen(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "--timeout", "2", "polite.py"],
        cwd=proj, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=ignore,
    )  # fmt: skip
    try:
        status = Path(f"/proc/{cmd.pid}/status").read_text()
        ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        assert ignored & (1 << (signal.SIGINT - 1)), "the test's launcher must start with SIGINT ignored"
        out, err = cmd.communicate(timeout=60)
    finally:
        if cmd.poll() is None:
            cmd.kill()
            cmd.communicate()
    assert cmd.returncode == 124, out + err
    assert "sigint ignored: False sigterm ignored: False" in out
    log = (only_run_dir(proj) / "output.log").read_text()
    assert "saved on KeyboardInterrupt" in log
    summary = json.loads((only_run_dir(proj) / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["returncode"]) == ("interrupted", "timeout", 0)


# -- 6. endings said truly --------------------------------------------------------------------------------
def test_a_timeout_is_no_success_even_when_the_script_exits_0(proj, capsys):
    """Promise: ``colabkit run --timeout`` exits 124, as timeout(1) does, whatever status the script chose."""
    script(
        proj,
        "polite.py",
        "import sys, time\ntry:\n    while True:\n        time.sleep(0.02)\nexcept KeyboardInterrupt:\n    sys.exit(0)\n",
    )
    assert cli.main(["run", "--no-monitor", "--timeout", "0.5", "polite.py"]) == 124
    err = capsys.readouterr().err
    assert re.match(r"colabkit run: polite\.py was stopped by --timeout 0\.5s after", err), err


def test_a_script_that_exits_0_on_the_budgets_sigterm_is_stopped_not_finished(proj, capsys):
    """Promise: a Lightning-style script that stops cleanly (exit 0) on SIGTERM at the budget is recorded as
    ``stopped`` by the budget, raises RunFailed with check=True, and makes ``colabkit run`` exit 124."""
    body = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True:\n    time.sleep(0.02)\n"
    script(proj, "lightning.py", body)
    with pytest.raises(RunFailed, match=r"exited 0 on SIGTERM, before the end of its work") as info:
        _run.run("lightning.py", budget=3.0, grace=1.5, monitor=False)
    r = info.value.result
    assert (r.status, r.reason, r.returncode) == ("stopped", "budget", 0)
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert (summary["status"], summary["reason"], summary["returncode"]) == ("stopped", "budget", 0)
    capsys.readouterr()
    assert cli.main(["run", "--no-monitor", "--budget", "3", "--grace", "1.5", "lightning.py"]) == 124
    assert "lightning.py was stopped by --budget 3s after" in capsys.readouterr().err


def test_an_oom_the_script_recovered_from_does_not_name_a_later_unrelated_crash(proj):
    """Promise: CudaOutOfMemory comes from the failure itself (the final traceback), not from an
    out-of-memory message the script caught and recovered from earlier."""
    script(
        proj,
        "recovers.py",
        """
        import traceback
        class OutOfMemoryError(RuntimeError):
            pass
        try:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        except OutOfMemoryError:
            traceback.print_exc()
            print("batch size halved, going on", flush=True)
        for step in range(3):
            print(f"step {step}", flush=True)
        raise ValueError("bad label 7 in batch 3")
        """,
    )
    with pytest.raises(RunFailed) as info:
        _run.run("recovers.py", monitor=False)
    assert type(info.value) is RunFailed, "an unrelated crash was called an out-of-memory"
    assert info.value.stderr_tail.splitlines()[-1] == "ValueError: bad label 7 in batch 3"
    assert "CUDA out of memory" in info.value.result.log_path.read_text()  # it was in the output all along


def test_an_oom_raised_from_a_chained_exception_is_still_an_oom(proj):
    """Promise: an out-of-memory error that caused the final one (``raise ... from``) is the diagnosis."""
    script(
        proj,
        "chained.py",
        """
        class OutOfMemoryError(RuntimeError):
            pass
        try:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB.")
        except OutOfMemoryError as exc:
            raise RuntimeError("training step failed") from exc
        """,
    )
    with pytest.raises(CudaOutOfMemory) as info:
        _run.run("chained.py", monitor=False)
    assert "failed allocating 512.0 MiB more" in info.value.message


def test_a_signal_to_the_runs_supervisor_stops_the_run_like_stop(proj):
    """Promise: SIGTERM to the supervisor itself (a container shutting down, a ``kill`` by hand) ends the run
    with the stop sequence, and the run says why, instead of leaving the script without its supervisor."""
    script(proj, "ready.py", "import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.02)\n")
    sent: list[int] = []

    def hook(state):
        if "ready" in state.seen and not sent:
            sent.append(state.child.proc.pid)
            os.kill(state.child.proc.pid, signal.SIGTERM)

    r = go("ready.py", monitor=False, check=False, observer=hook)
    assert (r.status, r.reason, r.returncode) == ("interrupted", "signal", -2)
    assert "[colabkit] the run's supervisor got signal 15: stopping the run" in r.log_path.read_text()
    assert not running(sent[0])
