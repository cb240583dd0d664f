"""``run()``: the training script as a child process with live output, a GPU monitor and a run folder.

The child runs in its own process group through ``python -m colabkit._child`` (which behaves like
``python SCRIPT``). ``_stream.pump()`` moves its output to ``output.log`` and the screen on the calling
thread and ends the group on Stop, timeout or KeyboardInterrupt (SIGINT, then SIGTERM, then SIGKILL,
see ``_group``); any error inside ``run()`` ends the group the same way before it is raised. A
``budget`` ends it the other way round: SIGTERM a grace period before the budget ends (the script's
cue to save), SIGKILL when it ends. ``resume=True`` hands the latest checkpoint to the script. This
module holds the run folder, ``summary.json`` and ``RunResult``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _budget, _group, _stale, _stream, display, monitoring, oom, runtime
from ._budget import fmt as _fmt
from .errors import ColabkitError, CudaOutOfMemory, RunFailed, ScriptNotFound
from .monitoring import MIN_INTERVAL, Sample, Sampler, Stats

__all__ = ["RunResult", "run"]

SCHEMA = 1
STDERR_TAIL = 20


@dataclass(frozen=True)
class RunResult:
    """What a run did: exit status, time, where its files are, and what the GPU monitor saw.

    ``status`` is ``"finished"``, ``"failed"``, ``"interrupted"`` (Stop, KeyboardInterrupt or ``timeout``)
    or ``"stopped"`` (the ``budget`` ran out and the script did not exit 0 in its grace period). A script
    that saves on SIGTERM and exits 0 is ``"finished"`` with ``reason="budget"``. ``framework_peak_bytes`` is the
    child's own ``torch.cuda.max_memory_allocated()`` on its busiest GPU (``None`` without torch/CUDA).
    ``attribution`` says how ``stats.child_peak_gpu_bytes`` was found: ``"pid"``, ``"new-pids"`` or ``"baseline"``.
    ``args`` are the script's arguments as recorded, with secret-looking values (``--api-key``,
    ``--token=``) shown as ``***``; the script itself got the real ones. ``stderr_tail`` holds the last
    lines of the child's output (stdout and stderr share one pipe, so they stay in order), as does
    ``RunFailed.stderr_tail``.

    Examples:
        >>> r = colabkit.run("train.py", "--epochs", "1")
        >>> r
        RunResult(status='finished', returncode=0, duration=1m12s, peak=9.8 GiB/15.0 GiB, log='runs/20260101-120000-train/output.log')
    """

    returncode: int | None
    status: str
    duration_s: float
    log_dir: Path
    log_path: Path
    samples: tuple[Sample, ...] = ()
    stats: Stats | None = None
    framework_peak_bytes: int | None = None
    attribution: str | None = None
    script: str = ""
    args: tuple[str, ...] = ()
    framework_reserved_bytes: int | None = None
    stderr_tail: tuple[str, ...] = field(default=(), repr=False)
    oom: str | None = None  # "pytorch" | "tensorflow" | "jax" when the child ran out of GPU memory
    oom_tried_bytes: int | None = None
    reason: str | None = None  # "interrupt" | "timeout" | "budget": why colabkit stopped the child
    timeout: float | None = None
    budget: float | None = None  # seconds, as asked
    grace: float | None = None  # seconds between SIGTERM and SIGKILL
    stop_at: float | None = None  # seconds after the start when SIGKILL was due (budget or the VM limit)
    resumed_from: Path | None = None  # the checkpoint handed to the script with resume=True

    @property
    def ok(self) -> bool:
        return self.status == "finished"

    @property
    def peak_gpu_bytes(self) -> int | None:
        return self.stats.peak_used_bytes if self.stats else None

    @property
    def gpu_total_bytes(self) -> int | None:
        return self.stats.total_bytes if self.stats else None

    def check(self) -> RunResult:
        """Return ``self`` if the run finished; raise what ``run(check=True)`` would have raised.

        Raises:
            CudaOutOfMemory: the child crashed out of GPU memory.
            RunFailed: the child exited non-zero or was stopped by the timeout.
        """
        if self.status == "finished":
            return self
        tail = "\n".join(self.stderr_tail[-STDERR_TAIL:])
        common: dict[str, Any] = {
            "returncode": self.returncode,
            "stderr_tail": tail,
            "log_path": self.log_path,
            "result": self,
        }
        if self.status == "interrupted":
            what = (
                f"timeout={self.timeout:g}s"
                if self.reason == "timeout" and self.timeout is not None
                else "an interrupt"
            )
            raise RunFailed(
                f"{self.script} was stopped by {what} after {display.format_duration(self.duration_s)}",
                f"Pass a larger timeout= (or timeout=None) to run(); the output so far is in {self.log_path}",
                **common,
            )
        if self.status == "stopped":
            limit = f"budget={_fmt(self.budget)}" if self.budget is not None else "its budget"
            if self.stop_at is not None and self.budget is not None and self.stop_at < self.budget:
                limit = f"the Colab VM's ~12 h limit (before {limit})"
            raise RunFailed(
                f"{self.script} was stopped by {limit} after {display.format_duration(self.duration_s)} "
                f"({_describe_returncode(self.returncode)})",
                f"Catch SIGTERM in the script, save a checkpoint and exit 0 within grace={_fmt(self.grace)} "
                f"(see docs/long-runs.md), or pass a larger budget=; the output so far is in {self.log_path}",
                **common,
            )
        if self.oom is not None:
            raise CudaOutOfMemory(
                oom.message(
                    self.oom, self.script, self.peak_gpu_bytes, self.gpu_total_bytes, self.oom_tried_bytes
                )
                + (f"\n{tail}" if tail else ""),
                "To fit in memory: " + oom.advice(self.oom),
                peak_bytes=self.peak_gpu_bytes,
                total_bytes=self.gpu_total_bytes,
                **common,
            )
        status = _describe_returncode(self.returncode)
        raise RunFailed(
            f"{self.script} exited with {status}"
            + (f"; last lines of its output:\n{tail}" if tail else " and wrote no output"),
            f"Fix the error shown above and run again; the full output is in {self.log_path}",
            **common,
        )

    def summary(self) -> str:
        """A few lines: status, duration, GPU peak and headroom, attribution, framework peak, files."""
        fb = display.format_bytes
        lines = [
            f"{self.script} {self.status} ({_describe_returncode(self.returncode)}) in {display.format_duration(self.duration_s)}"
        ]
        if self.stats is not None:
            lines.append(self.stats.describe(duration=False))  # the first line has it
        if self.resumed_from is not None:
            lines.append(f"resumed from {self.resumed_from}")
        if self.reason == "budget":
            lines.append(f"budget {_fmt(self.budget)}: SIGTERM sent {_fmt(self.grace)} before the end")
        if self.framework_peak_bytes is not None:
            lines.append(
                f"torch peak: {fb(self.framework_peak_bytes)} allocated, {fb(self.framework_reserved_bytes)} reserved"
            )
        lines.append(f"log: {self.log_path}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [f"status={self.status!r}", f"returncode={display.na(self.returncode)}"]
        parts.append(f"duration={display.format_duration(self.duration_s)}")
        if self.reason is not None:
            parts.append(f"reason={self.reason!r}")
        if self.stats is not None and self.stats.gpu_count:
            parts.append(
                f"peak={display.format_bytes(self.peak_gpu_bytes)}/{display.format_bytes(self.gpu_total_bytes)}"
            )
        if self.framework_peak_bytes is not None:
            parts.append(f"torch_peak={display.format_bytes(self.framework_peak_bytes)}")
        parts.append(f"log={str(self.log_path)!r}")
        return f"RunResult({', '.join(parts)})"

    def _repr_html_(self) -> str:
        return display.html_pre(self.summary())

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Draw GPU memory (and child memory) and utilisation over time to ``gpu.png`` in the run folder.

        Args:
            path: where to write the PNG (default ``<run folder>/gpu.png``).

        Returns:
            The path of the image.

        Raises:
            ImportError: matplotlib is not installed (``pip install matplotlib``).
        """
        try:
            import matplotlib.figure  # noqa: F401 - only to say how to install it
        except ImportError:
            raise ImportError(
                "RunResult.plot() needs matplotlib, which is not installed: run `pip install matplotlib` "
                "(or `pip install colabkit-gpu[plot]`)"
            ) from None
        out = Path(path) if path is not None else self.log_dir / "gpu.png"
        monitoring.draw(self.samples, out, f"{self.script}: {self.status}")
        display.show_image(out)
        return out


def _describe_returncode(rc: int | None) -> str:
    if rc is None:
        return "no exit status"
    if rc < 0:
        try:
            return f"signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"signal {-rc}"
    return f"exit status {rc}"


# -- the run folder ---------------------------------------------------------------------------------
def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _project_dir() -> Path | None:
    from . import projects

    current = projects.current()
    return Path(current.path) if current is not None else None


def _new_run_dir(root: Path, stem: str) -> Path:
    """A new, empty run folder ``<root>/<YYYYmmdd-HHMMSS>-<stem>`` (``-2``, ``-3``... if taken).

    Raises:
        ColabkitError: ``root`` cannot be written (a read-only project folder); the hint names ``log_dir``.
    """
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9._-]', '_', stem)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            candidate = root / (base if n == 1 else f"{base}-{n}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except FileExistsError as exc:  # root itself is a file
        raise ColabkitError(
            f"cannot create a run folder in {root}: {exc.filename} is a file",
            "Pass log_dir= a folder (on the command line: colabkit run --log-dir /content/runs ...)",
        ) from exc
    except OSError as exc:
        raise ColabkitError(
            f"cannot create a run folder in {root}: {exc.strerror or exc}",
            "Pass log_dir= a writable folder, e.g. run(..., log_dir='/content/runs') "
            "(on the command line: colabkit run --log-dir /content/runs ...)",
        ) from exc
    raise ColabkitError(f"could not create a run folder in {root}", f"Remove old run folders from {root}")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return (
        _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


# -- the run ---------------------------------------------------------------------------------------
class _Run(_stream.Output):
    """One run's live state and the handles to end it; the loop runs on the caller's thread."""

    def __init__(
        self,
        script: str,
        args: tuple[str, ...],
        run_dir: Path,
        timeout: float | None,
        budget: _budget.Budget | None = None,
    ) -> None:
        super().__init__()
        self.script = script
        self.args = args  # as shown: secrets redacted
        self.run_dir = run_dir
        self.timeout = timeout
        self.budget = budget
        self.term_sent: float | None = None  # seconds after the start when the budget's SIGTERM went out
        self.user_interrupt = False
        self.proc: Any = None
        self.pid: int | None = None
        self.tree: _group.Tree | None = None
        self.reason: str | None = None
        self.summary: dict[str, Any] = {}
        self.sampler: Sampler | None = None
        self.started = 0.0  # time.monotonic() at the start

    def write_summary(self, **changes: Any) -> None:
        self.summary.update(changes)
        _write_json(self.run_dir / "summary.json", self.summary)


def run(
    script: str | os.PathLike[str],
    *args: Any,
    python: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    monitor: bool = True,
    interval: float = 1.0,
    log_dir: str | os.PathLike[str] = "runs",
    check: bool = True,
    timeout: float | None = None,
    release: bool = False,
    raw: bool = False,
    kill_stale: bool = False,
    resume: bool = False,
    resume_arg: str | None = None,
    checkpoint_dir: str | os.PathLike[str] = "checkpoints",
    budget: str | float | None = None,
    grace: str | float | None = None,
) -> RunResult:
    """Run a Python script as a child process with live output and a GPU memory monitor.

    The script path resolves against ``cwd``, else the open project, else the current folder. Output
    streams live (``\\r`` progress bars stay on one line, floods are throttled) and goes in full to
    ``<project>/<log_dir>/<YYYYmmdd-HHMMSS>-<script>/output.log`` with ``metrics.csv`` and ``summary.json``.

    The child's environment holds ``COLABKIT_CHECKPOINT_DIR`` (the absolute checkpoint folder) and, with
    ``resume=True`` and a checkpoint there, ``COLABKIT_RESUME`` (the newest one, by
    ``colabkit.latest()``). With a ``budget``, the child's process group gets SIGTERM ``grace`` seconds
    before the budget ends and SIGKILL when it ends; on Colab, a budget that outlasts the VM's ~12 h
    limit is shortened to end there (with a ``ColabkitWarning``). See ``docs/long-runs.md``.

    Args:
        script: the ``.py`` file to run.
        *args: its command-line arguments (converted with ``str``).
        python: interpreter to use (default: this kernel's); it must have colabkit installed unless ``raw=True``.
        cwd: the child's working folder (default: the open project, else the current folder).
        env: extra environment variables for the child.
        monitor: sample the GPU(s) and the child's memory every ``interval`` seconds.
        interval: seconds between samples (0.05 or more).
        log_dir: folder for run folders, relative to the project (or absolute).
        check: raise ``RunFailed`` when the run does not finish with exit status 0.
        timeout: seconds after which the child is stopped (SIGINT, SIGTERM, SIGKILL).
        release: give the Colab runtime back when the run ends, whatever the outcome (``colabkit.release()``).
        raw: run ``python SCRIPT`` without colabkit's bootstrap: no torch peak report, and no watchdog,
            so if this process dies (SIGKILL, a kernel restart) the script's processes keep running.
        kill_stale: end processes left alive by earlier runs of this project before starting.
        resume: hand the newest checkpoint in ``checkpoint_dir`` to the script (``COLABKIT_RESUME``);
            with none there the script starts fresh and ``COLABKIT_RESUME`` is unset.
        resume_arg: also pass the checkpoint as arguments, from a template such as ``"--resume {path}"``
            (split like a shell line; appended only when a checkpoint was found).
        checkpoint_dir: the script's checkpoint folder, relative to its working folder (or absolute).
        budget: how long the script may run: ``"2h"``, ``"90m"``, ``"45s"``, ``"1h30m"`` or seconds.
        grace: seconds (or ``"5m"``) between SIGTERM and SIGKILL at the end of the budget; default 60 s,
            or a tenth of a budget shorter than 10 minutes.

    Returns:
        RunResult: exit status, duration, run folder, samples and stats.

    Raises:
        ScriptNotFound: ``script`` does not exist (relative paths resolve against the working folder).
        CudaOutOfMemory: the child crashed out of GPU memory (with ``check=True``).
        RunFailed: the child exited non-zero, hit ``timeout``, or was still running (or exited
            non-zero) when its ``budget`` ran out (with ``check=True``).
        ValueError: ``budget`` or ``grace`` is not a duration, ``grace`` is not shorter than ``budget``,
            or ``resume_arg`` lacks ``{path}``.
        KeyboardInterrupt: you pressed Stop; the child's process group was ended first.

    Examples:
        >>> r = colabkit.run("train.py", "--epochs", "3")
        >>> r.stats.peak_used_bytes, r.stats.headroom_bytes
        (10523508736, 5579325440)
        >>> colabkit.run("train.py", resume=True, resume_arg="--resume {path}", budget="2h")
        colabkit: VM up 3h10m of ~12h00m; about 8h50m left
        colabkit: resuming from /content/drive/MyDrive/test/checkpoints/ckpt-000012.pt
        ...
        RunResult(status='finished', returncode=0, duration=2h00m, reason='budget', log='runs/...')
    """
    try:
        result = _run(
            script,
            tuple(str(a) for a in args),
            python=python,
            cwd=cwd,
            env=env,
            monitor=monitor,
            interval=interval,
            log_dir=log_dir,
            timeout=timeout,
            raw=raw,
            kill_stale=kill_stale,
            resume=resume,
            resume_arg=resume_arg,
            checkpoint_dir=checkpoint_dir,
            budget=budget,
            grace=grace,
        )
    except BaseException:
        if release:
            _release(quiet_errors=True)
        raise
    if release:
        try:
            if check:
                result.check()
        finally:
            _release(quiet_errors=not result.ok and check)
        return result
    return result.check() if check else result


def _release(*, quiet_errors: bool) -> None:
    from . import session

    try:
        session.release()
    except Exception as exc:
        if not quiet_errors:
            raise
        display.note(f"colabkit: release failed too: {exc}")


def _resolve_script(script: str | os.PathLike[str], workdir: Path) -> Path:
    path = Path(script)
    full = path if path.is_absolute() else workdir / path
    if full.is_file():
        return full
    try:
        nearby = sorted(p.name for p in workdir.iterdir() if p.suffix == ".py")[:10]
    except OSError:
        nearby = []
    listing = ", ".join(nearby) if nearby else "no .py files"
    raise ScriptNotFound(
        f"script not found: {full}",
        f"Check the name and the folder: {workdir} holds {listing}. Open the project first "
        "(colabkit.project('NAME')) or pass cwd= or an absolute path; on the command line, "
        "cd into the project folder or give the script's full path (colabkit run /path/to/train.py).",
        path=full,
    )


def _run(
    script: str | os.PathLike[str],
    args: tuple[str, ...],
    *,
    python: str | None,
    cwd: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None,
    monitor: bool,
    interval: float,
    log_dir: str | os.PathLike[str],
    timeout: float | None,
    raw: bool,
    kill_stale: bool,
    resume: bool = False,
    resume_arg: str | None = None,
    checkpoint_dir: str | os.PathLike[str] = "checkpoints",
    budget: str | float | None = None,
    grace: str | float | None = None,
) -> RunResult:
    if resume_arg is not None and (not resume or "{path}" not in resume_arg):
        raise ValueError(
            f"resume_arg={resume_arg!r} needs resume=True and a {{path}} placeholder, "
            "e.g. run(..., resume=True, resume_arg='--resume {path}')"
        )
    rt = runtime.detect()
    plan = _budget.plan(budget, grace, rt)
    if monitor and (not interval or interval < MIN_INTERVAL):
        raise ValueError(f"interval={interval!r} is too short: use at least {MIN_INTERVAL} seconds")
    project = _project_dir()
    workdir = Path(cwd).resolve() if cwd is not None else (project or Path.cwd())
    script_path = _resolve_script(script, workdir)
    root = Path(log_dir) if Path(log_dir).is_absolute() else (project or workdir) / log_dir
    _stale.report(root, kill=kill_stale)
    if rt.time_left_s is not None:
        display.note(
            f"colabkit: VM up {runtime.format_duration(rt.uptime_s or 0)} of "
            f"~{runtime.format_duration(rt.vm_limit_s or 0)}; about {runtime.format_duration(rt.time_left_s)} left"
        )
    ckpt_dir = Path(os.path.abspath(workdir / checkpoint_dir))
    resumed_from = None
    if resume:
        from . import checkpoint

        resumed_from = checkpoint.latest(ckpt_dir)
        if resumed_from is None:
            display.note(f"colabkit: no checkpoint in {ckpt_dir} yet; starting fresh")
        else:
            display.note(f"colabkit: resuming from {resumed_from}")
            if resume_arg is not None:
                args = (*args, *_budget.resume_tokens(resume_arg, resumed_from))
    run_dir = _new_run_dir(root, script_path.stem)
    report_path = run_dir / ".framework.json"

    sampler = Sampler(interval=interval, csv_path=run_dir / "metrics.csv") if monitor else None
    if sampler is not None:
        if sampler.gpu_count == 0:
            display.note("colabkit: no NVIDIA GPU visible (NVML found none); monitoring RAM and time only")
        sampler.capture_baseline()

    child_env = dict(os.environ)
    child_env.update({"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
    child_env.update({str(k): str(v) for k, v in (env or {}).items()})
    child_env["COLABKIT_CHECKPOINT_DIR"] = str(ckpt_dir)
    if resumed_from is not None:
        child_env["COLABKIT_RESUME"] = str(resumed_from)
    elif resume:
        child_env.pop("COLABKIT_RESUME", None)
    cmd = [python or sys.executable]
    if not raw:
        cmd += ["-m", "colabkit._child"]
        child_env["COLABKIT_CHILD_REPORT"] = str(report_path)
        # the watchdog then notices if this process dies before it starts looking
        child_env["COLABKIT_CHILD_LAUNCHER"] = str(os.getpid())
    cmd += [str(script), *args]

    import subprocess

    import psutil

    state = _Run(str(script), tuple(_stale.redact(args)), run_dir, timeout, plan)
    state.sampler = sampler
    state.summary = {
        "schema": SCHEMA,
        "status": "running",
        "script": str(script),
        "args": list(state.args),
        "started": None,
        "ended": None,
        "duration_s": None,
        "returncode": None,
        "pid": None,
        "pid_create_time": None,
        "launcher_pid": os.getpid(),
        "launcher_create_time": psutil.Process().create_time(),
        "boot_id": runtime.boot_id(),
        "hostname": socket.gethostname(),
        "peak_gpu_bytes": None,
        "gpu_total_bytes": None,
        "framework_peak_bytes": None,
        "attribution": None,
        "log": "output.log",
        "reason": None,
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
        "budget_s": plan.budget if plan is not None else None,
    }
    state.log = _stream.Log(run_dir / "output.log")
    started_wall = time.time()
    state.started = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=str(workdir),
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one pipe: the log and the screen keep the order they were written in
            start_new_session=True,
        )
    except OSError as exc:
        state.log.close()
        raise ColabkitError(
            f"could not start {cmd[0]!r}: {exc.strerror or exc}",
            "Pass python=None to use this kernel's interpreter, or the full path of an existing one",
        ) from exc
    # from here on the child runs: whatever goes wrong, end its group before raising (it may hold the GPU)
    state.proc, state.pid = proc, proc.pid
    try:
        state.tree = _group.Tree(proc.pid)
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = None
        state.write_summary(started=_iso(started_wall), pid=proc.pid, pid_create_time=create_time)
        if sampler is not None:
            sampler.watch(proc.pid)
            sampler.start()
        state.readers = _stream.start_reader(proc, state.queue)
        state.view = display.OutputView()
        state.status = display.StatusLine(state.view.mode)
        _stream.pump(state)
        result = _finish(state, report_path, resumed_from)
    except BaseException as exc:
        _abort(state, exc)
        raise
    if state.reason == "interrupt" or state.user_interrupt:
        raise KeyboardInterrupt
    return result


def _finish(state: _Run, report_path: Path, resumed_from: Path | None) -> RunResult:
    """After the child and its group are gone: collect the output, the stats, and write the summary."""
    proc, sampler, log, view = state.proc, state.sampler, state.log, state.view
    assert log is not None and view is not None and state.status is not None
    _stream.join_readers(state.readers)
    _stream.drain(state)
    _stream.close_pipes(proc)
    ended_wall = time.time()
    duration = time.monotonic() - state.started
    rc = proc.returncode
    stats = sampler.stop() if sampler is not None else None
    if sampler is not None and sampler.error is not None:
        display.note(f"colabkit: the GPU monitor stopped early: {sampler.error!r}")
    samples = sampler.samples if sampler is not None else ()
    framework_peak, framework_reserved = _framework_report(report_path)

    trailer = ""
    if state.reason == "budget":
        run_status = "finished" if rc == 0 else "stopped"
        trailer = f"\n[colabkit] run {run_status} (budget) after {display.format_duration(duration)}\n"
    elif state.reason is not None:
        run_status = "interrupted"
        why = "timeout" if state.reason == "timeout" else "interrupt"
        trailer = f"\n[colabkit] run interrupted ({why}) after {display.format_duration(duration)}\n"
    else:
        run_status = "finished" if rc == 0 else "failed"
    log.close(trailer)
    tail = state.output_tail()
    oom_framework = oom.detect("\n".join(tail)) if run_status == "failed" else None
    plan = state.budget
    result = RunResult(
        returncode=rc,
        status=run_status,
        duration_s=duration,
        log_dir=state.run_dir,
        log_path=state.run_dir / "output.log",
        samples=samples,
        stats=stats,
        framework_peak_bytes=framework_peak,
        attribution=stats.attribution if stats else None,
        script=state.script,
        args=state.args,
        framework_reserved_bytes=framework_reserved,
        stderr_tail=tail[-STDERR_TAIL:],
        oom=oom_framework,
        oom_tried_bytes=oom.tried_bytes("\n".join(tail)) if oom_framework else None,
        reason=state.reason,
        timeout=state.timeout,
        budget=plan.budget if plan is not None else None,
        grace=plan.grace if plan is not None else None,
        stop_at=plan.kill_at if plan is not None else None,
        resumed_from=resumed_from,
    )
    try:
        state.write_summary(
            status=run_status,
            ended=_iso(ended_wall),
            duration_s=round(duration, 3),
            returncode=rc,
            peak_gpu_bytes=result.peak_gpu_bytes,
            gpu_total_bytes=result.gpu_total_bytes,
            framework_peak_bytes=framework_peak,
            attribution=result.attribution,
            reason=state.reason,
        )
    except OSError as exc:  # Drive went away: the result is still here
        _stream.drive_lost("summary.json", exc, "the result")
    if samples and any(s.used for s in samples):
        try:  # saved for later, not shown: the notebook shows it when the user calls result.plot()
            monitoring.draw(samples, state.run_dir / "gpu.png", f"{result.script}: {result.status}")
        except ImportError:
            pass
        except Exception as exc:  # a plot must never cost the run's result
            display.note(f"colabkit: could not draw gpu.png: {exc}")
    view.status = ""
    view.render(time.monotonic(), final=True)
    state.status.close(_stream.status_text(sampler, duration))
    display.note(result.summary())
    return result


def _framework_report(path: Path) -> tuple[int | None, int | None]:
    """The child's torch peaks (allocated, reserved) on its busiest GPU, from ``.framework.json``."""
    peak = reserved = None
    if not path.exists():
        return None, None
    try:
        devices = json.loads(path.read_text(encoding="utf-8")).get("devices") or []
        if devices:
            busiest = max(devices, key=lambda d: d.get("max_memory_allocated") or 0)
            peak, reserved = int(busiest["max_memory_allocated"]), int(busiest["max_memory_reserved"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        path.unlink()
    except OSError:
        pass
    return peak, reserved


def _abort(state: _Run, exc: BaseException) -> None:
    """After an error inside run(): end the child's processes, the sampler and readers, close the log, mark the summary.

    Each step runs even if an earlier one fails; the caller re-raises ``exc``.
    """
    proc = state.proc
    left = _group.end_now(state.tree, proc)
    if state.sampler is not None:
        try:
            state.sampler.stop()
        except Exception:
            pass
    _stream.join_readers(state.readers)
    _stream.close_pipes(proc)
    interrupted = isinstance(exc, KeyboardInterrupt)
    status = "interrupted" if interrupted else "failed"
    why = "interrupt" if interrupted else f"{type(exc).__name__} in colabkit: {exc}"
    if state.log is not None:
        state.log.close(f"\n[colabkit] run {status} ({why}); the child's processes were ended\n")
    try:
        state.write_summary(
            status=status,
            ended=_iso(time.time()),
            duration_s=round(time.monotonic() - state.started, 3),
            returncode=proc.returncode,
            reason="interrupt" if interrupted else state.reason,
        )
    except BaseException:  # Drive gone, or Stop pressed again: the error being raised says more
        pass
    if state.status is not None:
        try:
            state.status.close()
        except Exception:
            pass
    if left:
        display.note(f"colabkit: processes of the run survive SIGKILL: {left}")


# -- command line ------------------------------------------------------------------------------------
def _cli_configure_run(parser: Any) -> None:
    import argparse

    parser.add_argument("script", help="the Python script to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between GPU samples (default 1)")
    parser.add_argument("--log-dir", default="runs", help="folder for run folders (default runs)")
    parser.add_argument("--timeout", type=float, default=None, help="stop the script after this many seconds")
    parser.add_argument("--no-monitor", action="store_true", help="do not sample the GPU")
    parser.add_argument("--raw", action="store_true", help="run python SCRIPT without colabkit's bootstrap")
    parser.add_argument(
        "--kill-stale", action="store_true", help="end processes left alive by earlier runs first"
    )
    parser.add_argument(
        "--resume", action="store_true", help="hand the newest checkpoint to the script ($COLABKIT_RESUME)"
    )
    parser.add_argument(
        "--resume-arg",
        default=None,
        metavar="TEMPLATE",
        help="also pass it as arguments, e.g. '--resume {path}'",
    )
    parser.add_argument(
        "--checkpoint-dir", default="checkpoints", help="the script's checkpoint folder (default checkpoints)"
    )
    parser.add_argument(
        "--budget", default=None, help="stop the script after this long: 2h, 90m, 45s, 1h30m or seconds"
    )
    parser.add_argument(
        "--grace",
        default=None,
        help="seconds between SIGTERM and SIGKILL at the end of the budget (default 60)",
    )


# run()'s keyword arguments in a hint, as the command line spells them
_CLI_WORDS = (
    ("Pass a larger timeout= (or timeout=None) to run()", "Pass a larger --timeout (or none)"),
    ("pass a larger budget=", "pass a larger --budget"),
    ("within grace=", "within --grace "),
)


def _cli_explain(result: RunResult) -> None:
    """Why the run did not finish, with the fix, on stderr (the output itself is already on screen)."""
    try:
        result.check()
    except RunFailed as exc:
        message = exc.message
        if exc.stderr_tail and message.endswith("\n" + exc.stderr_tail):
            message = message[: -len(exc.stderr_tail) - 1]
        message = message.removesuffix("; last lines of its output:")
        hint = exc.hint or ""
        for api, cli in _CLI_WORDS:
            hint = hint.replace(api, cli)
        print(f"colabkit run: {message}" + (f"\nHINT: {hint}" if hint else ""), file=sys.stderr)


def _cli_run(args: Any) -> int:
    try:
        result = _cli_start(args)
    except ValueError as exc:  # a bad --budget, --grace, --interval or --resume-arg
        print(f"colabkit run: {exc}", file=sys.stderr)
        return 2
    _cli_explain(result)
    rc = result.returncode
    if rc is None:
        return 1
    return 128 - rc if rc < 0 else rc


def _cli_start(args: Any) -> RunResult:
    return run(
        args.script,
        *args.args,
        monitor=not args.no_monitor,
        interval=args.interval,
        log_dir=args.log_dir,
        timeout=args.timeout,
        raw=args.raw,
        kill_stale=args.kill_stale,
        resume=args.resume,
        resume_arg=args.resume_arg,
        checkpoint_dir=args.checkpoint_dir,
        budget=args.budget,
        grace=args.grace,
        check=False,
    )
