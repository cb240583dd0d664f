"""torchrun for several ranks: the plan and its errors, the command, whose output line is whose, and real
torchrun runs with two CPU ranks on gloo (torch is installed in CI: .ci/run)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import child_env
from fakes.nvml import GIB, MIB, FakeDevice, FakeNvml

from colabkit import _nvml, _ranks, _run
from colabkit._history import read_run
from colabkit._spec import RunSpec
from colabkit._stop import StopTimes
from colabkit.errors import NoGpuError, NotEnoughGpus, RunFailed

HAVE_TORCH = importlib.util.find_spec("torch") is not None
if not HAVE_TORCH and os.environ.get("COLABKIT_TEST_REQUIRE_TORCH"):
    raise RuntimeError("torch is not installed, but COLABKIT_TEST_REQUIRE_TORCH asks for the torchrun tests")
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch (pip install torch==2.13.0, the CPU build)")


# -- the plan ---------------------------------------------------------------------------------------


def test_no_ranks_asked_is_one_process():
    assert _ranks.plan(None, None, visible=2) is None


def test_nproc_runs_cpu_ranks_on_gloo_even_without_gpus():
    assert _ranks.plan(None, 2, visible=0) == _ranks.RankPlan(2, 0, "gloo")
    assert _ranks.plan(None, 2, visible=0).describe() == "2 CPU ranks (gloo)"


def test_gpus_n_and_all():
    assert _ranks.plan(2, None, visible=2) == _ranks.RankPlan(2, 2, "nccl")
    assert _ranks.plan("all", None, visible=2) == _ranks.RankPlan(2, 2, "nccl")
    assert _ranks.plan("all", 2, visible=2).describe() == "2 ranks, one GPU each (nccl)"


def test_more_gpus_than_visible_on_kaggle_names_the_t4x2_accelerator():
    with pytest.raises(NotEnoughGpus) as err:
        _ranks.plan(2, None, visible=1, kind="kaggle")
    exc = err.value
    assert isinstance(exc, NoGpuError)
    assert (exc.wanted, exc.visible, exc.runtime, exc.reason) == (2, 1, "kaggle", "not_enough")
    assert exc.message == "gpus=2 asks for 2 GPUs, but this machine shows 1 GPU"
    assert exc.hint == (
        "In the notebook editor open Settings → Accelerator → GPU T4 x2 (the one Kaggle accelerator with two GPUs), "
        "then re-run the notebook from the top; or pass gpus=1 (gpus='all' takes every visible GPU)."
    )
    assert exc.render("cli").startswith("--gpus 2 asks for 2 GPUs, but this machine shows 1 GPU\nHINT: ")
    assert exc.render("cli").endswith("; or pass --gpus 1.")


def test_more_gpus_than_visible_on_colab_and_elsewhere():
    with pytest.raises(NotEnoughGpus) as err:
        _ranks.plan(2, None, visible=1, kind="colab")
    assert err.value.hint.startswith("A Colab runtime has one GPU: pass gpus=1 (or nproc=N for N ranks on it)")
    with pytest.raises(NotEnoughGpus) as err:
        _ranks.plan(4, None, visible=0, kind="terminal")
    assert err.value.message == "gpus=4 asks for 4 GPUs, but this machine shows no GPU"
    assert err.value.hint == "Use a machine with that many GPUs."


def test_all_gpus_without_a_gpu_is_the_no_gpu_error_of_the_runtime():
    with pytest.raises(NoGpuError) as err:
        _ranks.plan("all", None, visible=0, kind="kaggle")
    assert err.value.message == "No NVIDIA GPU in this Kaggle notebook (gpus='all', and NVML sees no GPU)."
    assert "GPU T4 x2 (two GPUs; or GPU P100, one;" in err.value.hint


@pytest.mark.parametrize(
    ("gpus", "nproc", "match"),
    [
        (0, None, r"gpus=0: pass a number of processes of at least 1, or 'all'"),
        (None, 0, r"nproc=0: pass a number of processes of at least 1$"),
        (True, None, r"gpus=True"),
        ("two", None, r"gpus='two'"),
        (2, 3, r"gpus=2 and nproc=3 disagree: a GPU run has one rank per GPU"),
    ],
)
def test_bad_counts(gpus, nproc, match):
    with pytest.raises(ValueError, match=match):
        _ranks.plan(gpus, nproc, visible=4)


@pytest.mark.parametrize(
    ("cvd", "count"), [(None, 2), ("", 0), ("0", 1), ("0,1", 2), ("1,0,3", 2), ("0,-1,1", 1), ("GPU-ab12", 1)]
)
def test_visible_gpus_follows_cuda_visible_devices(cvd, count):
    env = {} if cvd is None else {"CUDA_VISIBLE_DEVICES": cvd}
    assert _ranks.visible_gpus(2, env) == count


# -- the command ------------------------------------------------------------------------------------


def test_command_runs_the_users_torch_with_the_bootstrap(tmp_path):
    cmd = _ranks.command(_ranks.RankPlan(2), "/usr/bin/python3", "train.py", ("--epochs", "3"), logs=tmp_path)
    assert cmd == [
        "/usr/bin/python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--tee", "3", "--log-dir", str(tmp_path), "-m", "colabkit._child", "train.py", "--epochs", "3",
    ]  # fmt: skip
    raw = _ranks.command(_ranks.RankPlan(2), "python", "train.py", (), logs=tmp_path, bootstrap=False)
    assert raw[-3:] == ["--log-dir", str(tmp_path), "train.py"]


def test_environment_marks_lines_and_names_the_backend():
    assert _ranks.environment(_ranks.RankPlan(2, 2, "nccl")) == {
        "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}]:",
        "COLABKIT_DIST_BACKEND": "nccl",
    }


def test_torch_missing_in_another_interpreter(tmp_path):
    python = tmp_path / "python"
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    assert _ranks.torch_missing(str(python)) == f"PyTorch is not installed in {python}"


def test_log_dirs_are_private_and_swept_when_their_launcher_is_gone(tmp_path):
    mine = _ranks.log_dir()
    try:
        assert oct(mine.stat().st_mode & 0o777) == "0o700"
        assert mine.name.startswith(f"colabkit-ranks-{os.getpid()}-")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        gone = tmp_path / f"colabkit-ranks-{int(dead.stdout)}-abc"
        gone.mkdir()
        (gone / "stdout.log").write_text("a secret printed by a rank\n")
        alive = tmp_path / f"colabkit-ranks-{os.getpid()}-def"
        alive.mkdir()
        other = tmp_path / "unrelated"
        other.mkdir()
        assert _ranks.sweep_log_dirs(tmp_path) == [gone]
        assert not gone.exists() and alive.exists() and other.exists()
    finally:
        _ranks.remove_log_dir(mine)
    assert not mine.exists()


# -- whose line is whose -------------------------------------------------------------------------------

_FAILED = """\
[rank0]:hello from rank 0
[rank1]:hello from rank 1
[rank1]:Traceback (most recent call last):
[rank1]:ValueError: bad batch
W1201 09:44:35.975000 29821 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 29826 closing signal SIGTERM
E1201 09:44:36.074000 29821 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 1 (pid: 29827) of binary: /usr/bin/python3
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
t.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-01_09:44:36
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 29826)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_09:44:35
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 29827)
  error_file: <N/A>
============================================================
"""


def test_rank_output_keeps_each_ranks_lines_and_finds_the_root_cause():
    out = _ranks.RankOutput(2)
    for i in range(0, len(_FAILED), 7):  # any cut of the stream
        out.feed(_FAILED[i : i + 7])
    out.finish()
    assert out.ranks_seen == (0, 1)
    assert out.tail(1) == ("hello from rank 1", "Traceback (most recent call last):", "ValueError: bad batch")
    assert out.tail(0, 1) == ("hello from rank 0",)
    assert out.failure() == _ranks.RankFailure(rank=1, exitcode=1, pid=29827)


def test_rank_output_of_old_torch_marks_and_the_failed_line_alone():
    out = _ranks.RankOutput(2)
    out.feed("[default0]:a\n[default1]:b\rb2\nE1201 api.py:1002] failed (exitcode: -9) local_rank: 0 (pid: 7) of binary: x\n")
    out.finish()
    assert out.tail(0) == ("a",) and out.tail(1) == ("b2",)
    assert out.failure() == _ranks.RankFailure(rank=0, exitcode=-9, pid=7)


def test_rank_output_of_a_run_that_did_not_fail():
    out = _ranks.RankOutput(2)
    out.feed("[rank0]:done\n[rank1]:done")
    out.finish()
    assert out.failure() is None
    assert out.tail(1) == ("done",)


# -- real torchrun, two CPU ranks -----------------------------------------------------------------------

_SCRIPT = textwrap.dedent(
    """\
    import os, sys, time
    import torch.distributed as dist
    dist.init_process_group(os.environ["COLABKIT_DIST_BACKEND"])
    rank = dist.get_rank()
    print(f"rank {rank} of {dist.get_world_size()} ready", flush=True)
    if sys.argv[1:] == ["fail"] and rank == 1:
        raise SystemExit("rank 1 gives up")
    if sys.argv[1:] == ["fail"]:
        time.sleep(60)
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} done", flush=True)
    """
)


def _torchrun(tmp_path, *args):
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    rank_plan = _ranks.plan(None, 2, visible=0)
    logs = _ranks.log_dir()
    try:
        cmd = _ranks.command(rank_plan, sys.executable, str(script), args, logs=logs)
        env = child_env(**_ranks.environment(rank_plan))
        proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=100)
    finally:
        _ranks.remove_log_dir(logs)
    out = _ranks.RankOutput(2)
    out.feed(proc.stdout + proc.stderr)
    out.finish()
    return proc, out


@needs_torch
def test_two_cpu_ranks_on_gloo_end_normally(tmp_path):
    proc, out = _torchrun(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.tail(0)[-1] == "rank 0 done" and out.tail(1)[-1] == "rank 1 done"
    assert "rank 0 of 2 ready" in out.tail(0) and "rank 1 of 2 ready" in out.tail(1)
    assert out.failure() is None


@needs_torch
def test_one_rank_failing_ends_the_other_and_is_named(tmp_path):
    proc, out = _torchrun(tmp_path, "fail")
    assert proc.returncode == 1
    failure = out.failure()
    assert failure is not None and (failure.rank, failure.exitcode) == (1, 1)
    assert out.tail(1)[-1] == "rank 1 gives up"
    assert "rank 0 done" not in out.tail(0)  # ended by torchrun, not left to sleep


# -- each rank's peaks ---------------------------------------------------------------------------------------


def test_rank_peaks_follow_each_ranks_processes(tmp_path):
    code = "import sys, time; x = bytearray(int(sys.argv[1])); print('up', flush=True); time.sleep(30)"
    kids = []
    try:
        for rank, size in ((0, 8 * 2**20), (1, 64 * 2**20)):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank))
            kid = subprocess.Popen([sys.executable, "-c", code, str(size)], env=env, stdout=subprocess.PIPE, text=True)
            kids.append(kid)
            assert kid.stdout.readline() == "up\n"
        launcher = os.getpid()  # no RANK: not a rank's
        peaks = _ranks.RankPeaks()
        pids = {launcher, *(k.pid for k in kids)}
        peaks.add(pids, {kids[1].pid: 3 * 2**30})
        peaks.add(pids, {kids[1].pid: 2 * 2**30, kids[0].pid: None})
        stats = peaks.stats()
        assert [(s.rank, s.pid) for s in stats] == [(0, kids[0].pid), (1, kids[1].pid)]
        assert stats[1].peak_memory_bytes > stats[0].peak_memory_bytes + 40 * 2**20
        assert (stats[0].peak_gpu_bytes, stats[1].peak_gpu_bytes) == (None, 3 * 2**30)
        assert stats[1].to_json() == {
            "rank": 1, "pid": kids[1].pid, "peak_memory_bytes": stats[1].peak_memory_bytes, "peak_gpu_bytes": 3 * 2**30,
        }  # fmt: skip
    finally:
        for kid in kids:
            kid.kill()
            kid.wait()
            kid.stdout.close()


def test_rank_of_a_process_without_rank_or_gone():
    assert _ranks.rank_of(os.getpid()) is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert _ranks.rank_of(int(dead.stdout)) is None


# -- secrets in a torchrun run's output ------------------------------------------------------------------------


def test_rank_masker_hides_a_value_split_by_another_ranks_output():
    token = "hf_smokeTokenValue12345"
    stream = (
        b"banner\n[rank0]:rank 0 token hf_smo[rank1]:rank 1 token hf_smokeTo[rank0]:keTokenValue12345 end\n"
        b"[rank1]:kenValue12345 end\n[rank0]:done\n"
    )
    for cut in range(len(stream) + 1):
        m = _ranks.RankMasker([token])
        shown = m.feed(stream[:cut]) + m.feed(stream[cut:]) + m.flush()
        assert token.encode() not in shown.replace(b"[rank0]:", b"").replace(b"[rank1]:", b""), cut
        assert shown.count(b"***") == 2, (cut, shown)
        assert b"[rank0]:rank 0 token " in shown and b"done\n" in shown


def test_rank_masker_gives_back_what_it_held_at_the_end():
    m = _ranks.RankMasker(["abcdef"])
    shown = m.feed(b"[rank1]:x abc") + m.feed(b"[ran")
    assert shown == b"[rank1]:x "
    assert m.flush() == b"abc[ran"  # rank 1's held text, then the mark that never finished: all of it, in order


# -- run(nproc=2): two CPU ranks through colabkit's run -------------------------------------------------------


_RANKS = textwrap.dedent(
    """\
    import os, sys, time
    import torch.distributed as dist
    dist.init_process_group(os.environ["COLABKIT_DIST_BACKEND"])
    rank = dist.get_rank()
    with open(f"rank{rank}.pid.tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(f"rank{rank}.pid.tmp", f"rank{rank}.pid")
    print(f"rank {rank} ready", flush=True)
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "fail" and rank == 1:
        print("rank 1 reads a bad batch", flush=True)
        raise SystemExit(3)
    if mode in ("fail", "forever"):
        while True:
            time.sleep(0.05)
    if mode == "save":  # the checkpoint contract: SIGTERM sets a flag, the loop saves and the rank exits 0
        import signal
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop:
            time.sleep(0.05)
        print(f"rank {rank} saved", flush=True)
        raise SystemExit(0)
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} done", flush=True)
    """
)


@pytest.fixture
def ranks_proj(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "train.py").write_text(_RANKS)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(_run, "_project_dir", lambda: None)
    return folder


def _rank_pids(folder: Path) -> list[int]:
    return [int((folder / f"rank{r}.pid").read_text()) for r in (0, 1) if (folder / f"rank{r}.pid").exists()]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _left_in(folder: Path) -> list[str]:
    """Every live process (zombies aside) whose working folder is ``folder`` or below, this test's own aside: a
    scan of /proc, so a rank, torchrun, a supervisor or anything they started is seen whatever its pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and (cwd == str(folder) or cwd.startswith(f"{folder}/")):
            found.append(f"{entry.name}: {cmdline}")
    return found


def _logs_left(launcher: int) -> list[str]:
    return [p.name for p in Path(tempfile.gettempdir()).glob(f"colabkit-ranks-{launcher}-*")]


@needs_torch
def test_run_with_two_cpu_ranks(ranks_proj, capsys):
    import colabkit

    r = colabkit.run("train.py", nproc=2, interval=0.1)
    assert r.ok and r.ranks["nproc"] == 2 and r.ranks["backend"] == "gloo" and r.ranks["failed"] is None
    log = r.log_path.read_text()
    assert "[rank0]:rank 0 done\n" in log and "[rank1]:rank 1 done\n" in log
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert summary["ranks"]["nproc"] == 2
    peaks = {row["rank"]: row for row in summary["ranks"]["peaks"]}
    assert set(peaks) == {0, 1}
    assert all(row["peak_memory_bytes"] > 10 * 2**20 for row in peaks.values())  # a python with torch loaded
    assert {row["pid"] for row in peaks.values()} == set(_rank_pids(ranks_proj))
    out = capsys.readouterr().out
    assert "colabkit: torchrun with 2 CPU ranks (gloo)" in out
    assert "ranks: 2 (gloo); peaks rank 0 " in out
    assert _logs_left(os.getpid()) == []  # torchrun's private log folder is gone


@needs_torch
def test_a_failing_rank_ends_the_other_and_is_reported_with_its_own_lines(ranks_proj):
    import colabkit

    with pytest.raises(RunFailed) as err:
        colabkit.run("train.py", "fail", nproc=2, monitor=False)
    exc = err.value
    assert exc.message.startswith(
        "train.py: rank 1 of 2 exited with exit status 3, and torchrun ended the other ranks; last lines of rank 1:\n"
    )
    assert exc.stderr_tail.splitlines()[-2:] == ["rank 1 ready", "rank 1 reads a bad batch"]
    assert "rank 0" not in exc.stderr_tail  # that rank's lines only
    assert all(_gone(pid) for pid in _rank_pids(ranks_proj))
    summary = json.loads((exc.result.log_dir / "summary.json").read_text())
    assert summary["ranks"]["failed"] == {"rank": 1, "exitcode": 3}
    assert exc.render("cli").startswith("train.py: rank 1 of 2 exited with exit status 3")


@needs_torch
def test_stop_mid_run_leaves_no_rank(ranks_proj):
    seen = {}

    def hook(state):
        if "rank 0 ready" in state.seen and "rank 1 ready" in state.seen and "stopped" not in seen:
            seen["stopped"] = _rank_pids(ranks_proj)
            raise KeyboardInterrupt

    spec = RunSpec.build("train.py", ["forever"], nproc=2, monitor=False, stop=StopTimes(int_grace=5.0), observer=hook)
    with pytest.raises(KeyboardInterrupt):
        _run.execute(spec)
    assert len(seen["stopped"]) == 2
    assert all(_gone(pid) for pid in seen["stopped"]), [p for p in seen["stopped"] if not _gone(p)]
    assert _left_in(ranks_proj) == []  # not a rank, not torchrun, not the supervisor
    (run_dir,) = (ranks_proj / "runs").iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


@needs_torch
def test_a_timeout_ends_every_rank(ranks_proj):
    import colabkit

    r = colabkit.run("train.py", "forever", nproc=2, timeout=20, check=False, monitor=False)
    assert (r.status, r.reason) == ("interrupted", "timeout")
    pids = _rank_pids(ranks_proj)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    assert _left_in(ranks_proj) == []
    assert "[rank0]:rank 0 ready\n" in r.log_path.read_text()


@needs_torch
def test_ranks_that_save_and_exit_0_on_the_budgets_sigterm_are_stopped_not_failed(ranks_proj):
    """SIGTERM goes to the ranks, not to torchrun's agent: signalled, the agent would SIGTERM them at once and
    exit 1 although they saved and exited 0."""
    import colabkit

    r = colabkit.run("train.py", "save", nproc=2, budget="12s", grace=6, check=False, monitor=False)
    log = r.log_path.read_text()
    assert "[rank0]:rank 0 saved\n" in log and "[rank1]:rank 1 saved\n" in log
    assert (r.status, r.reason, r.returncode) == ("stopped", "budget", 0), log[-2000:]
    assert "it exited 0 on SIGTERM, before the end of its work" in r.error().message
    assert "SignalException" not in log
    assert _left_in(ranks_proj) == []


@needs_torch
def test_kill_9_of_the_launcher_ends_every_rank(ranks_proj, tmp_path):
    code = "import colabkit; colabkit.run('train.py', 'forever', nproc=2, monitor=False)"
    launcher = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ranks_proj, env=child_env(TMPDIR=str(tmp_path)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids := _rank_pids(ranks_proj)) < 2:
            assert launcher.poll() is None, f"the launcher exited with {launcher.returncode}"
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.05)
        torchrun = psutil.Process(pids[0]).parent()
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        everyone = [*pids, torchrun.pid]
        deadline = time.monotonic() + 30
        while not all(_gone(pid) for pid in everyone):
            assert time.monotonic() < deadline, f"still running: {[p for p in everyone if not _gone(p)]}"
            time.sleep(0.05)
        (run_dir,) = (ranks_proj / "runs").iterdir()
        assert f"the process that started the run (pid {launcher.pid}) is gone" in (run_dir / "output.log").read_text()
        assert [p.name for p in _ranks.sweep_log_dirs(tmp_path)] != []  # the dead launcher's private folder
        assert list(tmp_path.glob("colabkit-ranks-*")) == []
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@needs_torch
def test_kill_9_of_colabkit_run_on_the_command_line_ends_every_rank_within_seconds(ranks_proj, tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "--nproc", "2", "train.py", "forever"],
        cwd=ranks_proj, env=child_env(TMPDIR=str(tmp_path)),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids := _rank_pids(ranks_proj)) < 2:
            assert launcher.poll() is None, f"colabkit run exited with {launcher.returncode}"
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.05)
        assert len(_left_in(ranks_proj)) >= 4  # colabkit run, its supervisor, torchrun and two ranks at least
        launcher.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait()
        while _left_in(ranks_proj):
            assert time.monotonic() - killed < 10, f"still running: {_left_in(ranks_proj)}"
            time.sleep(0.05)
        took = time.monotonic() - killed
        print(f"every process of the run gone {took:.2f} s after kill -9 of colabkit run")
        (run_dir,) = (ranks_proj / "runs").iterdir()
        assert json.loads((run_dir / "summary.json").read_text())["ranks"]["nproc"] == 2
        info = read_run(run_dir)  # summary.json and the ending its supervisor wrote beside it
        assert (info.status, info.reason) == ("interrupted", "launcher")
        assert f"the process that started the run (pid {launcher.pid}) is gone" in (run_dir / "output.log").read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


_ON_GPUS = textwrap.dedent(
    """\
    import os, time
    import torch.distributed as dist
    assert os.environ["COLABKIT_DIST_BACKEND"] == "nccl"  # the hint for a rank per GPU; the fake GPUs need gloo
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    with open(f"rank{rank}.pid.tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(f"rank{rank}.pid.tmp", f"rank{rank}.pid")
    while not os.path.exists("go"):
        time.sleep(0.02)
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} done", flush=True)
    """
)


@needs_torch
def test_two_gpus_show_one_line_each_and_the_summary_keeps_each_gpus_and_each_ranks_peak(ranks_proj):
    (ranks_proj / "train.py").write_text(_ON_GPUS)
    gpu0 = FakeDevice(name="Tesla T4", uuid="GPU-0", total=15 * GIB, used=[1 * GIB, 3 * GIB], util=80, temp=60)
    gpu1 = FakeDevice(name="Tesla T4", uuid="GPU-1", total=15 * GIB, used=[2 * GIB, 5 * GIB], util=90, temp=65)
    statuses: list[str] = []

    def hook(loop):
        statuses.append(loop.status_text)
        pids = _rank_pids(ranks_proj)
        if len(pids) == 2 and not gpu0.compute:
            gpu0.compute, gpu1.compute = [(pids[0], 700 * MIB)], [(pids[1], 900 * MIB)]  # as NVML lists them
        held = {s.rank: s.peak_gpu_bytes for s in loop.sampler.ranks.stats()}
        if held == {0: 700 * MIB, 1: 900 * MIB}:
            (ranks_proj / "go").touch()  # each rank's GPU memory was sampled: let the run end

    with _nvml._use_library(FakeNvml([gpu0, gpu1])):
        r = _run.execute(RunSpec.build("train.py", gpus=2, interval=0.05, observer=hook))
    assert r.ok and r.ranks["gpus"] == 2 and r.ranks["backend"] == "nccl"
    summary = json.loads((r.log_dir / "summary.json").read_text())
    assert summary["gpus"] == [
        {"index": 0, "peak_used_bytes": 3 * GIB, "total_bytes": 15 * GIB},
        {"index": 1, "peak_used_bytes": 5 * GIB, "total_bytes": 15 * GIB},
    ]
    peaks = {row["rank"]: row for row in summary["ranks"]["peaks"]}
    assert {rank: row["peak_gpu_bytes"] for rank, row in peaks.items()} == {0: 700 * MIB, 1: 900 * MIB}
    assert {row["pid"] for row in peaks.values()} == set(_rank_pids(ranks_proj))
    # while the ranks run: one line per GPU, then the RAM and the time (once they are gone there is no RAM to show)
    shown = [s.splitlines() for s in statuses if s.startswith("GPU0 ") and "\nRAM " in s]
    assert shown, statuses[-3:]
    last = shown[-1]
    assert len(last) == 3, last
    assert last[0].startswith("GPU0 3.0 GiB/15.0 GiB · peak 3.0 GiB · util 80% · 60°C")
    assert last[1].startswith("GPU1 5.0 GiB/15.0 GiB · peak 5.0 GiB · util 90% · 65°C")
    assert last[2].startswith("RAM ")


def test_more_gpus_than_here_stops_before_anything_is_made(ranks_proj):
    import colabkit

    with pytest.raises(NotEnoughGpus) as err:
        colabkit.run("train.py", gpus=8)
    assert err.value.wanted == 8
    assert not (ranks_proj / "runs").exists()


@needs_torch
def test_colabkit_run_nproc_and_gpus_on_the_command_line(ranks_proj):
    ok = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--no-monitor", "--nproc", "2", "train.py"],
        cwd=ranks_proj, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "[rank1]:rank 1 done" in ok.stdout
    too_many = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--gpus", "8", "train.py"],
        cwd=ranks_proj, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert too_many.returncode == 1
    assert too_many.stderr.startswith("colabkit run: --gpus 8 asks for 8 GPUs, but this machine shows ")
    bad = subprocess.run(
        [sys.executable, "-m", "colabkit", "run", "--gpus", "two", "train.py"],
        cwd=ranks_proj, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--gpus 'two': pass a number of GPUs, or 'all'" in bad.stderr


_PRINTS_SECRET = textwrap.dedent(
    """\
    import os, sys, time
    import torch.distributed as dist
    dist.init_process_group(os.environ["COLABKIT_DIST_BACKEND"])
    rank, value = dist.get_rank(), os.environ["HF_TOKEN"]
    print(f"rank {rank} whole {value}", flush=True)
    sys.stdout.write(f"rank {rank} split {value[:5]}"); sys.stdout.flush(); time.sleep(0.2)
    sys.stdout.write(f"{value[5:]} end\\n"); sys.stdout.flush()
    dist.barrier()
    if rank == 1:
        raise RuntimeError(f"rank 1 fails with {value}")
    time.sleep(30)
    """
)


@needs_torch
def test_a_secret_printed_by_ranks_is_nowhere_in_the_run_on_screen_or_in_the_error(ranks_proj, monkeypatch, capsys):
    import colabkit

    token = "hf_RanksSecretValue0987654"
    (ranks_proj / "train.py").write_text(_PRINTS_SECRET)
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(RunFailed) as err:
        colabkit.run("train.py", nproc=2, secrets=["HF_TOKEN"], interval=0.1)
    exc = err.value
    log = exc.result.log_path.read_text()
    pieces = re.split(r"\[rank(\d)\]:", log)  # torchrun marks each piece it copies: put each rank's back together
    own = {rank: "".join(pieces[i + 1] for i in range(1, len(pieces), 2) if pieces[i] == str(rank)) for rank in "01"}
    for rank in "01":
        assert f"rank {rank} whole ***\nrank {rank} split *** end\n" in own[rank], own[rank]
    assert "RuntimeError: rank 1 fails with ***" in exc.stderr_tail
    assert token not in str(exc) and token not in exc.render("cli") and token not in exc.stderr_tail
    for path in exc.result.log_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert json.loads((exc.result.log_dir / "summary.json").read_text())["secrets"] == {"HF_TOKEN": "env"}
    screen = capsys.readouterr()
    assert token not in screen.out + screen.err and "whole ***" in screen.out
    assert _logs_left(os.getpid()) == []  # torchrun's own copy of the ranks' output (unmasked) is gone
