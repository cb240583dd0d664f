"""``run()``: the training script as a child process with live output, a GPU monitor and a run folder.

This module takes a run from its spec (``_spec``) to its result (``_result``): it resolves the script,
creates the run folder (``_rundir``: ``output.log``, ``metrics.csv``, ``summary.json`` through ``_summary``,
``gpu.png``) and refuses to start where nothing could be kept, hands the latest checkpoint to the script
with ``resume=True``, starts the run's supervisor (``_launch``, ``_supervisor``), which runs the script in a
process group of its own through ``python -m colabkit._child`` (which behaves like ``python SCRIPT``) and
ends the run by itself if this process dies, hands it to the run's loop (``_loop``: output, status line,
timeout, budget, Stop) and collects what it did. Any error inside ``run()`` ends the run's processes with
the stop sequence (``_stop``) before it is raised; whatever happens to the run folder, the result is true.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import _command, _display, _files, _format, _memory, _oom, _procs, _rundir, _runtime, _stale, _summary
from ._keep import Keeper
from ._launch import LaunchError, Supervised, end_now, reap
from ._loop import Loop, status_text
from ._monitor import Sampler
from ._result import STDERR_TAIL, RunResult, show_summary
from ._resume import Where, asked, decide
from ._spec import Budget, RunSpec, redact
from ._stop import Tree
from ._stream import Log, Output, unwritable
from ._summary import RunSummary
from .errors import NO_GPU, ColabkitError, no_gpu_note

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
    resume_arg: str | Sequence[str] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    budget: str | float | None = None,
    grace: str | float | None = None,
    memory_history: bool | None = None,
    find_batch: bool = False,
    gpus: int | str | None = None,
    nproc: int | None = None,
    secrets: Sequence[str] = (),
) -> RunResult:
    """Run a Python script as a child process with live output and a GPU memory monitor.

    The script path resolves against ``cwd``, else the open project, else the current folder. Output
    streams live (``\\r`` progress bars stay on one line, floods are throttled) and goes in full to
    ``<project>/<log_dir>/<YYYYmmdd-HHMMSS>-<script>/output.log`` with ``metrics.csv`` and ``summary.json``;
    on Drive that folder is written on the VM's disk first and copied every few seconds, so a Drive that dies or
    hangs costs the run nothing (``colabkit.attach()`` shows it from another cell; ``colabkit.runs()`` how it ended).

    The child's environment holds ``COLABKIT_CHECKPOINT_DIR`` (the absolute checkpoint folder) and, with
    ``resume=True`` and a checkpoint there, ``COLABKIT_RESUME`` (the newest one, by
    ``colabkit.latest()``). With a ``budget``, the child's process group gets SIGTERM ``grace`` seconds
    before the budget ends and SIGKILL when it ends; on Colab, a budget that outlasts the VM's ~12 h
    limit is shortened to end there (with a ``ColabkitWarning``). See ``docs/long-runs.md``.

    With PyTorch, GPU memory is recorded per optimizer step (``steps.csv``, ``memory.svg``): creep is warned
    about, the batch that fits estimated, and an out-of-memory error explained with a fix (``docs/memory.md``).

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
        raw: run ``python SCRIPT`` without colabkit's bootstrap (no torch peak report); the supervisor that
            ends the run if this process dies (SIGKILL, a kernel restart) is there either way.
        kill_stale: end processes left alive by earlier runs of this project before starting.
        resume: hand the newest complete checkpoint in ``checkpoint_dir`` to the script (``COLABKIT_RESUME``):
            colabkit.save()'s, HF Trainer's ``checkpoint-N/``, Lightning's ``.ckpt``, ``ckpt.pt``,
            ``checkpoint.pth.tar``; with none there the script starts fresh and ``COLABKIT_RESUME`` is unset.
            Without it, a checkpoint there is said on the start line (the run may overwrite it).
        resume_arg: also pass arguments that make the script resume: ``"--resume {path}"``, ``"--init_from=resume"``
            (no ``{path}``: the script finds it), or a list (``["--ckpt_path", "{path}"]``); text is split like a
            shell line; appended only when a checkpoint was found.
        checkpoint_dir: the script's checkpoint folder, relative to its working folder (or absolute); default:
            its ``--output_dir``/``--out_dir``/``--default_root_dir`` argument, else ``checkpoints``.
        budget: how long the script may run: ``"2h"``, ``"90m"``, ``"45s"``, ``"1h30m"`` or seconds.
        grace: seconds (or ``"5m"``) between SIGTERM and SIGKILL at the end of the budget; default 60 s,
            or a tenth of a budget shorter than 10 minutes.
        memory_history: record PyTorch's allocation history, so an out-of-memory error names the lines of the
            script that held the memory (it costs time on every allocation). ``None`` (the default): on only
            for the run after one of the same script that ran out of memory without it.
        find_batch: before the run, measure the largest batch that fits with short probe runs (a few
            optimizer steps each, in fresh processes) at doubling sizes of the script's ``--batch-size``,
            ``--batch_size``, ``-b`` or ``--per_device_train_batch_size``; the run itself keeps the arguments given.
        gpus: start ``torchrun --standalone --nproc_per_node=N`` (your own torch) with one rank per GPU: a
            count, or ``"all"``; each output line carries its rank (``[rank1]:``), a failing rank ends the others.
        nproc: ``torchrun`` with this many ranks, with or without GPUs (CPU ranks: gloo); ``$COLABKIT_DIST_BACKEND``
            names the backend that fits.
        secrets: names (``["HF_TOKEN"]``) found in Colab's or Kaggle's secrets, the environment or the
            project's ``.env`` and put in the script's environment only; masked (``***``) in its output.

    Returns:
        RunResult: exit status, duration, run folder, samples and stats.

    Raises:
        ScriptNotFound: ``script`` does not exist (relative paths resolve against the working folder).
        ColabkitError: the run folder cannot be made or written before the script starts (a full disk, a
            read-only folder: the hint fits the cause); the script is not started.
        MountError: ``log_dir`` is on a Drive that stopped answering (remount it); the script is not started.
        CudaOutOfMemory: the child crashed out of GPU memory (with ``check=True``).
        RunFailed: the child exited non-zero, hit ``timeout``, or was stopped by its ``budget`` (with
            ``check=True``; a script that saved and exited 0 on the budget's SIGTERM is ``stopped`` too).
        ValueError: ``budget`` or ``grace`` is not a duration, ``grace`` is not shorter than ``budget``,
            ``resume_arg`` without ``resume=True``, or ``find_batch=True`` finds no batch size among the arguments.
        KeyboardInterrupt: you pressed Stop; the child's process group was ended first.
        NotEnoughGpus: ``gpus=N`` and fewer GPUs here (the hint: Kaggle's GPU T4 x2); nothing is started.
        SecretNotFound: a secret is in none of its sources (the hint says how to set it here); nothing is started.

    Examples:
        >>> r = colabkit.run("train.py", "--epochs", "3")
        >>> r.stats.peak_used_bytes, r.stats.headroom_bytes
        (10523508736, 5579325440)
        >>> colabkit.run("train.py", resume=True, resume_arg="--resume {path}", budget="2h", check=False)
        colabkit: VM up 3h10m of ~12h00m; about 8h50m left
        colabkit: resuming from /content/drive/MyDrive/test/checkpoints/ckpt-000012.pt
        ...
        RunResult(status='stopped', returncode=0, duration=2h00m, reason='budget', log='runs/...')
    """
    options = dict(locals())  # run()'s keyword arguments, by name: the spec checks and converts them
    del options["script"], options["args"]
    spec = RunSpec.build(script, args, **options)
    return execute(spec, stacklevel=2)


def execute(spec: RunSpec, *, stacklevel: int = 1) -> RunResult:
    """Run ``spec``; then, as it asks, raise for a run that did not finish and give the runtime back.

    ``stacklevel`` counts the frames from this function up to the code a warning should point at (1: its caller).
    """
    one = _Run(spec)
    try:
        result = one.go(stacklevel + 1)
    except BaseException:
        if spec.release:
            _release(quiet_errors=True)
        raise
    finally:
        if one.keeper is not None:
            one.keeper.abort()  # after an error: one bounded copy to Drive, the local folder kept (a no-op after finish)
        if one.launch is not None:
            one.launch.close()  # torchrun's log folder: it may hold what a rank printed, unmasked
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


# -- the run ---------------------------------------------------------------------------------------
class _Run:
    """One run from launch to result; its loop runs on the caller's thread."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.clock = spec.clock
        self.reason: str | None = None  # "timeout" | "budget" | "interrupt": why colabkit ended the child
        self.plan: Budget | None = None
        self.child: Supervised | None = None
        self.tree: Tree | None = None
        self.sampler: Sampler | None = None
        self.output: Output | None = None
        self.status: _display.StatusLine | None = None
        self.summary = RunSummary()
        self.shown_args = spec.shown_args  # the arguments as recorded: secrets redacted
        self.run_dir = Path()
        self.remote = Path()
        self.keeper: Keeper | None = None
        self.started = 0.0  # on the spec's clock
        self.started_wall = 0.0
        self.memory: _memory.MemoryWatch | None = None
        self.search: Any = None  # what find_batch measured
        self.ckpt_dir = Path()
        self.launch: _command.Launch | None = None
        self.limit_label: str | None = None

    # -- the steps -------------------------------------------------------------------------------------
    def go(self, stacklevel: int) -> RunResult:
        spec = self.spec
        rt = _runtime.detect_runtime()
        self.plan = spec.plan(rt, stacklevel=stacklevel + 1)
        self.limit_label = rt.limit_label if self.plan is not None and self.plan.vm_limited else None
        project = _project_dir()
        workdir = spec.cwd or project or Path.cwd()
        script_path = _command.resolve_script(spec.script, workdir)
        self.launch = launch = _command.prepare(spec, rt)  # a missing secret, too few GPUs: before anything is made
        root, ckpt_dir = _command.homes(spec, rt, project, workdir)  # a Kaggle dataset's go to /kaggle/working
        _rundir.check_root(root)
        _summary.flush_pending(root)  # endings earlier runs here could not write: the folder takes them again
        try:
            _stale.report(root, kill=spec.kill_stale, times=spec.stop)
        except OSError as exc:
            _display.note(f"colabkit: could not look for processes of earlier runs in {root}: {exc}")
        if rt.time_left_s is not None:
            _display.note(
                f"colabkit: {'Kaggle session' if rt.is_kaggle else 'VM'} up {_format.format_duration(rt.uptime_s or 0)} of "
                f"~{_format.format_duration(rt.vm_limit_s or 0)}; about {_format.format_duration(rt.time_left_s)} left"
            )
        self.ckpt_dir = ckpt_dir
        at = Where(ckpt_dir, asked(spec.checkpoint_dir, spec.args)[1])
        start = decide(at, resume=spec.resume, resume_arg=spec.resume_arg, surface=spec.surface)
        if start.note:  # what is resumed, or that a checkpoint is there that this run may overwrite: before it starts
            _display.note(start.note)
        resumed_from, args = start.resumed_from, (*_command.script_args(spec, rt, workdir, ckpt_dir), *start.tokens)
        self.shown_args = launch.mask(redact(args))
        self.remote = _rundir.new_run_dir(root, script_path.stem)  # the run folder as users see it
        self.keeper = Keeper(self.remote, clock=self.clock, heartbeat_s=spec.heartbeat_s, write_summary=self._write_summary)
        self.run_dir = self.keeper.folder  # where the run writes: the VM's disk first when the folder is on Drive
        report_path = self.run_dir / ".framework.json"
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
            secrets=launch.secrets.sources() or None,
            ranks=launch.summary(),
        )
        log = self._open_folder()
        self.keeper.start()

        if spec.monitor:
            self.sampler = Sampler(interval=spec.interval, csv_path=self.run_dir / "metrics.csv")
            if self.sampler.gpu_count == 0:
                rt = _runtime.detect_runtime()  # said once: not again after setup(gpu="prefer") said it
                _display.note_once(NO_GPU, f"colabkit: {no_gpu_note(rt.kind, tpu=rt.tpu)}")
            self.sampler.capture_baseline()
        if not spec.raw:
            self.memory = _memory.for_run(spec, self.plan, root, script_path.stem, self.run_dir, args)

        cmd, child_env = launch.start(spec, args, ckpt_dir=ckpt_dir, resumed_from=resumed_from, report_path=report_path)
        child_env[_procs.RUN_ID_ENV] = self.remote.name  # the run folder's name as runs() sees it, wherever it writes
        if spec.find_batch:
            self._find_batch(args, workdir, child_env, log)
        if self.memory is not None:
            child_env.update(self.memory.child_env())
        self._launch(cmd, workdir, child_env, log)
        child = self.child
        assert child is not None
        for said in child.notes:  # e.g. no child subreaper on this system
            _display.note(f"colabkit: {said}")
        # from here on the script runs: whatever goes wrong, end its processes before raising (they may hold the GPU)
        try:
            self.tree = Tree(child.pid, root=child.proc.pid)
            try:
                self._write_summary(
                    started=_summary.iso(self.started_wall),
                    pid=child.pid,
                    pid_create_time=_procs.create_time(child.pid),
                    supervisor_pid=child.proc.pid,
                    supervisor_create_time=_procs.create_time(child.proc.pid),
                )
            except OSError as exc:  # the folder failed between two writes: the run goes on, the end says so
                unwritable("summary.json", exc, self.run_dir, "the run goes on")
            if self.sampler is not None:
                self.sampler.watch(child.pid)
                self.sampler.ranks = _command.peaks(launch)
                self.sampler.start()
            keeper = self.keeper
            heard = (lambda text: keeper.heard(text, keeper.clock()),)
            self.output = Output(log, _display.OutputView(), masker=launch.masker(), taps=(*launch.taps(), *heard))
            self.output.start(child.output_fd)
            self.status = _display.StatusLine(self.output.view.mode)
            loop = Loop(
                spec,
                child=child,
                tree=self.tree,
                output=self.output,
                sampler=self.sampler,
                status=self.status,
                plan=self.plan,
                started=self.started,
                run_dir=self.run_dir,
                memory=self.memory,
                keeper=self.keeper,
                limit_label=self.limit_label,
            )
            loop.run()
            self.reason = loop.reason
            result = self._finish(report_path, resumed_from, csv_noted=loop.csv_noted, chart=loop.chart)
        except BaseException as exc:
            self._abort(exc, log)
            raise
        if loop.reason == "interrupt" or loop.user_interrupt:
            raise KeyboardInterrupt
        return result

    def _find_batch(self, args: tuple[str, ...], workdir: Path, env: dict[str, str], log: Log) -> None:
        """``find_batch=True``: the probes, before the run itself; Stop during them ends them and the run."""
        from . import _findbatch

        try:
            self.search = _findbatch.before_run(self.spec, args, workdir, env, self.run_dir, self.sampler)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            log.close(f"\n[colabkit] find_batch {'interrupted' if interrupted else 'failed'}: the script was not run\n")
            try:
                self._write_summary(status="interrupted" if interrupted else "failed", ended=_summary.iso(time.time()),
                                    reason="interrupt" if interrupted else None)  # fmt: skip
            except OSError:
                pass
            raise
        if self.memory is not None:
            self.memory.search = self.search

    def _open_folder(self) -> Log:
        """The first summary and ``output.log``, before the script starts: if either fails, nothing starts."""
        try:
            self._write_summary()
            return Log(self.run_dir / "output.log")
        except BaseException as exc:
            if self.keeper is not None:
                self.keeper.discard()  # the VM-disk folder, when there is one
            for name in (_summary.FILE, "output.log"):
                try:
                    (self.remote / name).unlink(missing_ok=True)
                except OSError:
                    pass
            try:
                self.remote.rmdir()  # nothing ran: leave no empty run behind
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _rundir.folder_error(exc, self.run_dir.parent, "write the run folder") from exc
            raise

    def _launch(self, cmd: list[str], workdir: Path, env: dict[str, str], log: Log) -> None:
        spec, plan = self.spec, self.plan
        config = {
            # the supervisor writes where the run writes (the VM's disk first); its record names the folder users see
            "log": str(self.run_dir / "output.log"),
            "run_dir": str(self.remote),
            "ending": str(self.run_dir / _summary.ENDING),
            "pending": str(_summary.pending_path(self.remote)),
            "machine": _files.machine_tag(),
            "launcher": os.getpid(),
            "mask": sorted(self.launch.secrets.env()) if self.launch is not None else [],  # names; values in its env
            "spare_group": self.launch is not None and self.launch.ranks is not None,  # torchrun's agent: see _supervisor
            # if this process dies: a budget's SIGTERM and its grace (the script's save contract), else Stop's sequence
            "first": "term" if plan is not None else "int",
            "waits": {
                "int": spec.stop.int_grace,
                "term": plan.grace if plan is not None else spec.stop.term_grace,
                "kill": spec.stop.kill_wait,
            },
        }
        self.started_wall = time.time()
        self.started = self.clock()
        try:
            self.child = Supervised.start(cmd, cwd=workdir, env=env, config=config)
        except OSError as exc:
            log.close()
            try:
                self._write_summary(status="failed", ended=_summary.iso(time.time()))
            except OSError:
                pass
            if isinstance(exc, LaunchError):
                raise ColabkitError(
                    f"could not start {cmd[0]!r}: {exc.strerror or exc}",
                    "Pass python=None to use this kernel's interpreter, or the full path of an existing one",
                ) from exc
            raise ColabkitError(
                f"could not start the run's supervisor: {exc}",
                f"Check that {sys.executable} runs, and run again",
            ) from exc

    def _write_summary(self, **changes: Any) -> None:
        self.summary = self.summary.replace(**changes)
        self.summary.write(self.run_dir)

    def _final_summary(self, **changes: Any) -> None:
        """The summary's last state: into the run folder, or kept where ``runs()`` finds it and writes it later."""
        try:
            self._write_summary(**changes)
        except OSError as exc:
            kept = self.summary.keep(self.run_dir)
            where = f"it is kept in {kept}" if kept is not None else "nowhere else could take it either"
            unwritable(
                "summary.json",
                exc,
                self.run_dir,
                f"the result is still here (RunResult); {where}",
                later="and written into the run folder as soon as it can be (colabkit.runs() does it)",
            )

    def _finish(
        self, report_path: Path, resumed_from: Path | None, *, csv_noted: bool = False, chart: Any = None
    ) -> RunResult:
        """After the child and its group are gone: collect the output, the stats, and write the summary."""
        child, sampler, output, status = self.child, self.sampler, self.output, self.status
        assert child is not None and output is not None and status is not None
        output.finish(self.spec.stop.kill_wait)
        reap(child, self.spec.stop.kill_wait)
        child.close(output=not output.reading)
        ended_wall = time.time()
        duration = self.clock() - self.started
        rc = child.returncode
        stats = sampler.stop() if sampler is not None else None
        if sampler is not None and sampler.error is not None:
            _display.note(f"colabkit: the GPU monitor stopped early: {sampler.error!r}")
        if sampler is not None and sampler.csv_error is not None and not csv_noted:  # failed at its last flush
            unwritable("metrics.csv", sampler.csv_error, self.run_dir, "its samples are in the result")
        samples = sampler.samples if sampler is not None else ()
        framework_peak, framework_reserved, ranks = _command.collect(self.launch, report_path, stats)

        trailer = ""
        if self.reason in ("budget", "creep"):
            run_status = "stopped"  # whatever the script did on SIGTERM, it did not get to its end
            trailer = f"\n[colabkit] run stopped ({self.reason}) after {_format.format_duration(duration)}\n"
        elif self.reason is not None:
            run_status = "interrupted"
            trailer = f"\n[colabkit] run interrupted ({self.reason}) after {_format.format_duration(duration)}\n"
        else:
            run_status = "finished" if rc == 0 else "failed"
        log = output.log
        log.close(trailer)
        tail = output.tail()
        failure = _oom.failure_text(tail)
        oom_framework = _oom.detect(failure) if run_status == "failed" else None
        memory = _memory.report(
            self.memory, self.sampler, stats, samples, script=self.spec.script, status=run_status,
            oom=oom_framework == "pytorch", chart=chart, checkpoint_dir=self.ckpt_dir, started_wall=self.started_wall,
        )  # fmt: skip
        plan = self.plan
        problem = log.problem
        result = RunResult(
            returncode=rc,
            status=run_status,
            duration_s=duration,
            log_dir=self.remote,
            log_path=self.remote / "output.log",
            samples=samples,
            stats=stats,
            framework_peak_bytes=framework_peak,
            attribution=stats.attribution if stats else None,
            script=self.spec.script,
            args=self.shown_args,
            framework_reserved_bytes=framework_reserved,
            stderr_tail=tail[-STDERR_TAIL:],
            oom=oom_framework,
            oom_tried_bytes=_oom.tried_bytes(failure) if oom_framework else None,
            reason=self.reason,
            timeout=self.spec.timeout,
            budget=plan.budget if plan is not None else None,
            grace=plan.grace if plan is not None else None,
            stop_at=plan.kill_at if plan is not None else None,
            resumed_from=resumed_from,
            unsaved_output=log.unsaved(),
            unsaved_path=_rundir.keep_unsaved(log.unsaved(), self.remote.name) if problem is not None else None,
            unsaved_dropped_bytes=log.dropped if problem is not None else 0,
            log_problem=problem.what if problem is not None else None,
            memory=memory,
            batch_search=self.search,
            ranks=ranks["ranks"],
            rank_tail=ranks["rank_tail"],
            limit_label=self.limit_label,
        )
        self._final_summary(
            status=run_status,
            ended=_summary.iso(ended_wall),
            duration_s=round(duration, 3),
            returncode=rc,
            peak_gpu_bytes=result.peak_gpu_bytes,
            gpu_total_bytes=result.gpu_total_bytes,
            framework_peak_bytes=framework_peak,
            attribution=result.attribution,
            reason=self.reason,
            memory=memory.to_json() if memory is not None else None,
            ranks=ranks["ranks"],
            gpus=ranks["gpus"],
            **self.keeper.ending(self.ckpt_dir),  # the step it reached, the newest checkpoint it left
        )
        if samples and any(s.used for s in samples):
            try:  # saved for later, not shown: the notebook shows it when the user calls result.plot()
                from . import _plot

                _plot.draw(samples, self.run_dir / "gpu.png", f"{result.script}: {result.status}")
            except ImportError:
                pass
            except Exception as exc:  # a plot must never cost the run's result
                _display.note(f"colabkit: could not draw gpu.png: {exc}")
        self.keeper.finish()  # the last copy to Drive, bounded; says so when Drive does not hold all of it
        output.view.status = ""
        output.view.render(self.clock(), final=True)
        status.close(status_text(sampler, duration))
        # Stop raises KeyboardInterrupt, not the run's error: the summary says how it ended and where the log is
        show_summary(result, error_follows=not result.ok and self.spec.check and self.reason != "interrupt")
        return result

    def _abort(self, exc: BaseException, log: Log) -> None:
        """After an error inside run(): end the run's processes, the sampler and reader, close the log, mark the summary.

        Each step runs even if an earlier one fails; the caller re-raises ``exc``.
        """
        child = self.child
        left = end_now(self.tree, child, self.spec.stop, self.spec.clock)
        if self.sampler is not None:
            try:
                self.sampler.stop()
            except Exception:
                pass
        if self.output is not None:
            self.output.finish(self.spec.stop.kill_wait)
        if child is not None:
            child.close(output=self.output is None or not self.output.reading)
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = "interrupted" if interrupted else "failed"
        why = "interrupt" if interrupted else f"{type(exc).__name__} in colabkit: {exc}"
        try:
            log.close(f"\n[colabkit] run {status} ({why}); the run's processes were ended\n")
        except Exception:
            pass
        try:
            self._write_summary(
                status=status,
                ended=_summary.iso(time.time()),
                duration_s=round(self.clock() - self.started, 3),
                returncode=child.returncode if child is not None else None,
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

