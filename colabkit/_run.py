"""``run()``: the training script as a child process with live output, a GPU monitor and a run folder.

This module takes a run from its spec (``_spec``) to its result (``_result``): it resolves the script,
creates the run folder (``output.log``, ``metrics.csv``, ``summary.json`` through ``_summary``, ``gpu.png``),
hands the latest checkpoint to the script with ``resume=True``, launches the child in its own process
group through ``python -m colabkit._child`` (which behaves like ``python SCRIPT``), hands it to the run's
loop (``_loop``: output, status line, timeout, budget, Stop) and collects what it did. Any error inside
``run()`` ends the child's processes with the stop sequence (``_stop``) before it is raised.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import _display, _files, _format, _oom, _procs, _runtime, _stale, _summary
from ._loop import Loop, status_text
from ._monitor import Sampler
from ._result import STDERR_TAIL, RunResult
from ._spec import Budget, RunSpec, redact
from ._stop import Stopper, Tree, signal_group
from ._stream import Log, Output, drive_lost
from ._summary import RunSummary
from .errors import ColabkitError, ScriptNotFound

__all__ = ["execute", "run"]

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
    options = dict(locals())  # run()'s keyword arguments, by name: the spec checks and converts them
    del options["script"], options["args"]
    spec = RunSpec.build(script, args, **options)
    return execute(spec, stacklevel=2)


def execute(spec: RunSpec, *, stacklevel: int = 1) -> RunResult:
    """Run ``spec``; then, as it asks, raise for a run that did not finish and give the runtime back.

    ``stacklevel`` counts the frames from this function up to the code a warning should point at (1: its caller).
    """
    try:
        result = _Run(spec).go(stacklevel + 1)
    except BaseException:
        if spec.release:
            _release(quiet_errors=True)
        raise
    if not spec.release:
        return result.check() if spec.check else result
    try:
        if spec.check:
            result.check()
    finally:
        # the run's own error is the one to see: a release that fails after it is only noted
        _release(quiet_errors=not result.ok and spec.check)
    return result


def _release(*, quiet_errors: bool) -> None:
    from . import _release

    try:
        _release.release()
    except Exception as exc:
        if not quiet_errors:
            raise
        _display.note(f"colabkit: release failed too: {exc}")


# -- where things are ------------------------------------------------------------------------------
def _project_dir() -> Path | None:
    from . import _project

    current = _project.current_project()
    return Path(current.path) if current is not None else None


def _resolve_script(script: str, workdir: Path) -> Path:
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
        "(colabkit.project('NAME')) or pass cwd= or an absolute path.",
        cli_hint=f"Check the name and the folder: {workdir} holds {listing}. cd into the project folder or "
        "give the script's full path (colabkit run /path/to/train.py).",
        path=full,
    )


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
            "Pass log_dir= a folder, e.g. run(..., log_dir='/content/runs')",
            cli_hint="Pass --log-dir a folder: colabkit run --log-dir /content/runs ...",
        ) from exc
    except OSError as exc:
        raise ColabkitError(
            f"cannot create a run folder in {root}: {exc.strerror or exc}",
            "Pass log_dir= a writable folder, e.g. run(..., log_dir='/content/runs')",
            cli_hint="Pass --log-dir a writable folder: colabkit run --log-dir /content/runs ...",
        ) from exc
    raise ColabkitError(f"could not create a run folder in {root}", f"Remove old run folders from {root}")


def _framework_report(path: Path) -> tuple[int | None, int | None]:
    """The child's torch peaks (allocated, reserved) on its busiest GPU, from ``.framework.json``."""
    peak = reserved = None
    if not path.exists():
        return None, None
    try:
        devices = (_files.read_json(path) or {}).get("devices") or []
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


# -- the run ---------------------------------------------------------------------------------------
class _Run:
    """One run from launch to result; its loop runs on the caller's thread."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.clock = spec.clock
        self.reason: str | None = None  # "timeout" | "budget" | "interrupt": why colabkit ended the child
        self.plan: Budget | None = None
        self.proc: Any = None
        self.tree: Tree | None = None
        self.sampler: Sampler | None = None
        self.output: Output | None = None
        self.status: _display.StatusLine | None = None
        self.summary = RunSummary()
        self.shown_args = spec.shown_args  # the arguments as recorded: secrets redacted
        self.run_dir = Path()
        self.started = 0.0  # on the spec's clock

    # -- the steps -------------------------------------------------------------------------------------
    def go(self, stacklevel: int) -> RunResult:
        spec = self.spec
        rt = _runtime.detect_runtime()
        self.plan = spec.plan(rt, stacklevel=stacklevel + 1)
        project = _project_dir()
        workdir = spec.cwd or project or Path.cwd()
        script_path = _resolve_script(spec.script, workdir)
        root = spec.log_dir if spec.log_dir.is_absolute() else (project or workdir) / spec.log_dir
        _stale.report(root, kill=spec.kill_stale, times=spec.stop)
        if rt.time_left_s is not None:
            _display.note(
                f"colabkit: VM up {_format.format_duration(rt.uptime_s or 0)} of "
                f"~{_format.format_duration(rt.vm_limit_s or 0)}; about {_format.format_duration(rt.time_left_s)} left"
            )
        ckpt_dir = Path(os.path.abspath(workdir / spec.checkpoint_dir))
        args = spec.args
        resumed_from = None
        if spec.resume:
            from . import _checkpoint

            resumed_from = _checkpoint.latest(ckpt_dir)
            if resumed_from is None:
                _display.note(f"colabkit: no checkpoint in {ckpt_dir} yet; starting fresh")
            else:
                _display.note(f"colabkit: resuming from {resumed_from}")
                args = (*args, *spec.resume_tokens(resumed_from))
        self.shown_args = tuple(redact(args))
        self.run_dir = _new_run_dir(root, script_path.stem)
        report_path = self.run_dir / ".framework.json"

        if spec.monitor:
            self.sampler = Sampler(interval=spec.interval, csv_path=self.run_dir / "metrics.csv")
            if self.sampler.gpu_count == 0:
                _display.note("colabkit: no NVIDIA GPU visible (NVML found none); monitoring RAM and time only")
            self.sampler.capture_baseline()

        child_env = dict(os.environ)
        child_env.update({"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
        child_env.update(dict(spec.env))
        child_env["COLABKIT_CHECKPOINT_DIR"] = str(ckpt_dir)
        if resumed_from is not None:
            child_env["COLABKIT_RESUME"] = str(resumed_from)
        elif spec.resume:
            child_env.pop("COLABKIT_RESUME", None)
        cmd = [spec.python or sys.executable]
        if not spec.raw:
            cmd += ["-m", "colabkit._child"]
            child_env["COLABKIT_CHILD_REPORT"] = str(report_path)
            # the watchdog then notices if this process dies before it starts looking
            child_env["COLABKIT_CHILD_LAUNCHER"] = str(os.getpid())
        cmd += [spec.script, *args]

        me = os.getpid()
        self.summary = RunSummary(
            script=spec.script,
            args=self.shown_args,
            launcher_pid=me,
            launcher_create_time=_procs.create_time(me),
            boot_id=_runtime.boot_id(),
            hostname=socket.gethostname(),
            resumed_from=str(resumed_from) if resumed_from is not None else None,
            budget_s=self.plan.budget if self.plan is not None else None,
        )
        log = Log(self.run_dir / "output.log")
        self._launch(cmd, workdir, child_env, log)
        # from here on the child runs: whatever goes wrong, end its group before raising (it may hold the GPU)
        try:
            self.tree = Tree(self.proc.pid)
            self._write_summary(
                started=_summary.iso(self.started_wall),
                pid=self.proc.pid,
                pid_create_time=_procs.create_time(self.proc.pid),
            )
            if self.sampler is not None:
                self.sampler.watch(self.proc.pid)
                self.sampler.start()
            self.output = Output(log, _display.OutputView())
            self.output.start(self.proc.stdout)
            self.status = _display.StatusLine(self.output.view.mode)
            loop = Loop(
                spec,
                proc=self.proc,
                tree=self.tree,
                output=self.output,
                sampler=self.sampler,
                status=self.status,
                plan=self.plan,
                started=self.started,
                run_dir=self.run_dir,
            )
            loop.run()
            self.reason = loop.reason
            result = self._finish(report_path, resumed_from)
        except BaseException as exc:
            self._abort(exc, log)
            raise
        if loop.reason == "interrupt" or loop.user_interrupt:
            raise KeyboardInterrupt
        return result

    def _launch(self, cmd: list[str], workdir: Path, env: dict[str, str], log: Log) -> None:
        import subprocess

        self.started_wall = time.time()
        self.started = self.clock()
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=str(workdir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one pipe: the log and the screen keep the order they were written in
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise ColabkitError(
                f"could not start {cmd[0]!r}: {exc.strerror or exc}",
                "Pass python=None to use this kernel's interpreter, or the full path of an existing one",
            ) from exc

    def _write_summary(self, **changes: Any) -> None:
        self.summary = self.summary.replace(**changes)
        self.summary.write(self.run_dir)

    def _finish(self, report_path: Path, resumed_from: Path | None) -> RunResult:
        """After the child and its group are gone: collect the output, the stats, and write the summary."""
        proc, sampler, output, status = self.proc, self.sampler, self.output, self.status
        assert output is not None and status is not None
        output.finish(self.spec.stop.kill_wait)
        _close_pipes(proc)
        ended_wall = time.time()
        duration = self.clock() - self.started
        rc = proc.returncode
        stats = sampler.stop() if sampler is not None else None
        if sampler is not None and sampler.error is not None:
            _display.note(f"colabkit: the GPU monitor stopped early: {sampler.error!r}")
        samples = sampler.samples if sampler is not None else ()
        framework_peak, framework_reserved = _framework_report(report_path)

        trailer = ""
        if self.reason == "budget":
            run_status = "finished" if rc == 0 else "stopped"
            trailer = f"\n[colabkit] run {run_status} (budget) after {_format.format_duration(duration)}\n"
        elif self.reason is not None:
            run_status = "interrupted"
            trailer = f"\n[colabkit] run interrupted ({self.reason}) after {_format.format_duration(duration)}\n"
        else:
            run_status = "finished" if rc == 0 else "failed"
        output.log.close(trailer)
        tail = output.tail()
        text = "\n".join(tail)
        oom_framework = _oom.detect(text) if run_status == "failed" else None
        plan = self.plan
        result = RunResult(
            returncode=rc,
            status=run_status,
            duration_s=duration,
            log_dir=self.run_dir,
            log_path=self.run_dir / "output.log",
            samples=samples,
            stats=stats,
            framework_peak_bytes=framework_peak,
            attribution=stats.attribution if stats else None,
            script=self.spec.script,
            args=self.shown_args,
            framework_reserved_bytes=framework_reserved,
            stderr_tail=tail[-STDERR_TAIL:],
            oom=oom_framework,
            oom_tried_bytes=_oom.tried_bytes(text) if oom_framework else None,
            reason=self.reason,
            timeout=self.spec.timeout,
            budget=plan.budget if plan is not None else None,
            grace=plan.grace if plan is not None else None,
            stop_at=plan.kill_at if plan is not None else None,
            resumed_from=resumed_from,
        )
        try:
            self._write_summary(
                status=run_status,
                ended=_summary.iso(ended_wall),
                duration_s=round(duration, 3),
                returncode=rc,
                peak_gpu_bytes=result.peak_gpu_bytes,
                gpu_total_bytes=result.gpu_total_bytes,
                framework_peak_bytes=framework_peak,
                attribution=result.attribution,
                reason=self.reason,
            )
        except OSError as exc:  # Drive went away: the result is still here
            drive_lost("summary.json", exc, "the result")
        if samples and any(s.used for s in samples):
            try:  # saved for later, not shown: the notebook shows it when the user calls result.plot()
                from . import _plot

                _plot.draw(samples, self.run_dir / "gpu.png", f"{result.script}: {result.status}")
            except ImportError:
                pass
            except Exception as exc:  # a plot must never cost the run's result
                _display.note(f"colabkit: could not draw gpu.png: {exc}")
        output.view.status = ""
        output.view.render(self.clock(), final=True)
        status.close(status_text(sampler, duration))
        _display.note(result.summary())
        return result

    def _abort(self, exc: BaseException, log: Log) -> None:
        """After an error inside run(): end the child's processes, the sampler and reader, close the log, mark the summary.

        Each step runs even if an earlier one fails; the caller re-raises ``exc``.
        """
        proc = self.proc
        left = _end_now(self.tree, proc, self.spec)
        if self.sampler is not None:
            try:
                self.sampler.stop()
            except Exception:
                pass
        if self.output is not None:
            self.output.finish(self.spec.stop.kill_wait)
        _close_pipes(proc)
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        why = "interrupt" if interrupted else f"{type(exc).__name__} in colabkit: {exc}"
        log.close(f"\n[colabkit] run {status} ({why}); the child's processes were ended\n")
        try:
            self._write_summary(
                status=status,
                ended=_summary.iso(time.time()),
                duration_s=round(self.clock() - self.started, 3),
                returncode=proc.returncode,
                reason="interrupt" if interrupted else self.reason,
            )
        except BaseException:  # Drive gone, or Stop pressed again: the error being raised says more
            pass
        if self.status is not None:
            try:
                self.status.close()
            except Exception:
                pass
        if left:
            _display.note(f"colabkit: processes of the run survive SIGKILL: {left}")


def _close_pipes(proc: Any) -> None:
    for stream in (proc.stdout, proc.stderr):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


def _end_now(tree: Tree | None, proc: Any, spec: RunSpec) -> list[int]:
    """After an error inside ``run()``: the whole stop sequence on the run's processes, then reap the child.

    Returns the processes that survived SIGKILL (normally none).
    """
    left: list[int] = []
    if tree is None:  # the error came before the tree was built: the group is all we know
        signal_group(proc.pid, signal.SIGKILL)
    else:
        try:
            left = Stopper(tree, spec.stop, spec.clock).run()
        except Exception as err:  # /proc unreadable: still try the last resort
            _display.note(f"colabkit: could not stop the run cleanly: {err!r}")
            signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=spec.stop.kill_wait)
    except BaseException:  # a process that survives SIGKILL, or Stop pressed again: the caller reports
        pass
    return left
