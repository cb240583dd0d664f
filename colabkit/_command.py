"""What a run's script starts as: its command line (colabkit's bootstrap, or ``torchrun`` with its ranks), its
environment (checkpoints, resume, secrets, the ranks' line marks) and where a Kaggle project's files go.

:func:`prepare` runs before the run folder exists, so a secret that is nowhere, more GPUs than the machine
has, or a missing torch stop the run before anything is made or started. Secrets travel in the script's
environment only: never on its command line; :attr:`Launch.masker` is what the output passes through
before the log, the screen or an error sees it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _display, _files, _notebook, _procs, _ranks, _rundir, _runtime, _secrets
from .errors import ColabkitError, ScriptNotFound

__all__ = ["Launch", "collect", "framework_peaks", "homes", "peaks", "prepare", "resolve_script", "script_args"]

RANK_REPORT = ".framework-rank{rank}.json"  # each rank's torch peaks ($RANK filled in by the bootstrap)


@dataclass
class Launch:
    """A run's start, decided before it starts: its ``secrets``, its ``ranks`` (``None``: one process)."""

    secrets: _secrets.Secrets = field(default_factory=_secrets.Secrets)
    ranks: _ranks.RankPlan | None = None
    logs: Path | None = None  # torchrun's private log folder (removed by close())
    output: _ranks.RankOutput | None = None  # whose line is whose, for a torchrun run

    def mask(self, args: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """The arguments as they may be recorded: every secret value as ``***``."""
        return tuple(self.secrets.mask(a) for a in args)

    def masker(self) -> Any:
        """The byte masker for the script's output (each rank's stream apart under torchrun); ``None`` without secrets."""
        if not self.secrets:
            return None
        if self.ranks is not None:
            return _ranks.RankMasker(tuple(self.secrets.env().values()))
        return self.secrets.masker(binary=True)

    def taps(self) -> tuple[Any, ...]:
        """What reads the masked output as it passes (the ranks' lines)."""
        return (self.output.feed,) if self.output is not None else ()

    def start(
        self,
        spec: Any,
        args: tuple[str, ...],
        *,
        ckpt_dir: Path,
        resumed_from: Path | None,
        report_path: Path,
    ) -> tuple[list[str], dict[str, str]]:
        """The command line and the environment the script starts with."""
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
        env.update(dict(spec.env))
        env.update(self.secrets.env())
        env["COLABKIT_CHECKPOINT_DIR"] = str(ckpt_dir)
        env[_procs.RUN_ID_ENV] = report_path.parent.name  # finds what escaped the run's tree after its supervisor died
        if resumed_from is not None:
            env["COLABKIT_RESUME"] = str(resumed_from)
        elif spec.resume:
            env.pop("COLABKIT_RESUME", None)
        python = spec.python or sys.executable
        if self.ranks is None:
            cmd = [python]
            if not spec.raw:
                cmd += ["-m", "colabkit._child"]
                env["COLABKIT_CHILD_REPORT"] = str(report_path)
            return [*cmd, spec.script, *args], env
        _ranks.sweep_log_dirs()
        self.logs = _ranks.log_dir()
        env.update(_ranks.environment(self.ranks))
        if not spec.raw:
            env["COLABKIT_CHILD_REPORT"] = str(report_path.with_name(RANK_REPORT))
            env["COLABKIT_CHILD_ONE_STREAM"] = "1"  # a rank's stderr into its stdout: one stream to mask per rank
        cmd = _ranks.command(self.ranks, python, spec.script, args, logs=self.logs, bootstrap=not spec.raw)
        _display.note(f"colabkit: torchrun with {self.ranks.describe()}")
        return cmd, env

    def close(self) -> None:
        """After the run: torchrun's log folder goes (it may hold unmasked output)."""
        _ranks.remove_log_dir(self.logs)
        self.logs = None
        if self.output is not None:
            self.output.finish()

    def failure(self) -> tuple[_ranks.RankFailure | None, tuple[str, ...]]:
        """The rank that failed first and its own last lines (without their marks)."""
        if self.output is None:
            return None, ()
        found = self.output.failure()
        return found, self.output.tail(found.rank) if found is not None else ()

    def summary(self, peaks: tuple[_ranks.RankStats, ...] = (), per_rank: dict[int, int] | None = None) -> dict[str, Any] | None:
        """``summary.json``'s ``ranks``: how many, on what, who failed first, each rank's peaks."""
        if self.ranks is None:
            return None
        found = self.output.failure() if self.output is not None else None
        per_rank = per_rank or {}
        rows = {s.rank: s.to_json() for s in peaks}
        for rank, peak in per_rank.items():
            rows.setdefault(rank, {"rank": rank, "pid": None, "peak_memory_bytes": None, "peak_gpu_bytes": None})
            rows[rank]["framework_peak_bytes"] = peak
        return {
            "nproc": self.ranks.nproc,
            "gpus": self.ranks.gpus,
            "backend": self.ranks.backend,
            "failed": {"rank": found.rank, "exitcode": found.exitcode} if found is not None else None,
            "peaks": [rows[r] for r in sorted(rows)],
        }


def _visible_gpus() -> int:
    from . import _monitor

    try:
        count = int(_monitor.default_source().device_count())
    except Exception:
        count = 0
    return _ranks.visible_gpus(count)


def _project_open() -> bool:
    from . import _project

    return _project.current_project() is not None


def prepare(spec: Any, rt: _runtime.Runtime) -> Launch:
    """Secrets found and ranks planned, before anything is made.

    Raises:
        SecretNotFound: a secret in ``spec.secrets`` is in none of its sources.
        NotEnoughGpus: ``gpus=N`` with fewer GPUs here.
        ColabkitError: ranks asked for, and the interpreter has no torch.
    """
    home = None if spec.cwd is None or _project_open() else Path(spec.cwd)  # whose .env: the project's, else cwd=
    found = _secrets.resolve(spec.secrets, runtime=rt, project=home) if spec.secrets else _secrets.Secrets()
    if spec.gpus is None and spec.nproc is None:
        return Launch(found)
    visible = _visible_gpus() if spec.gpus is not None else 0
    plan = _ranks.plan(spec.gpus, spec.nproc, visible=visible, kind=rt.kind, tpu=rt.tpu)
    assert plan is not None
    missing = _ranks.torch_missing(spec.python)
    if missing is not None:
        asked = f"gpus={spec.gpus!r}" if spec.gpus is not None else f"nproc={spec.nproc!r}"
        raise ColabkitError(
            f"{asked} starts the script with torchrun, and {missing}",
            "Install PyTorch in that interpreter (on Colab and Kaggle it is there already; elsewhere pick the "
            "command for your CUDA at pytorch.org), or pass python= one that has it",
            cli_message=f"{asked.replace('=', ' ').replace('gpus', '--gpus').replace('nproc', '--nproc')} starts "
            f"the script with torchrun, and {missing}",
        )
    return Launch(found, plan, output=_ranks.RankOutput(plan.nproc))


def homes(spec: Any, rt: _runtime.Runtime, project: Path | None, workdir: Path) -> tuple[Path, Path]:
    """The folder for run folders and the checkpoint folder; a read-only Kaggle dataset's go to /kaggle/working."""
    base = project or workdir
    ckpt_base = workdir
    if rt.is_kaggle:
        from . import _kaggle, _project

        for path in (base, ckpt_base):
            if _kaggle.is_input(path):
                _project.note_read_only(path)  # said once, also when setup() opened it
        if _kaggle.is_input(base) and not spec.log_dir.is_absolute():
            base = _kaggle.writable_home(base)
        if _kaggle.is_input(ckpt_base) and not checkpoint_folder(spec).is_absolute():
            ckpt_base = _kaggle.writable_home(ckpt_base)
    root = spec.log_dir if spec.log_dir.is_absolute() else base / spec.log_dir
    return root, Path(os.path.abspath(ckpt_base / checkpoint_folder(spec)))


def script_args(spec: Any, rt: _runtime.Runtime, workdir: Path, ckpt_dir: Path) -> tuple[str, ...]:
    """The script's arguments as it gets them: on a read-only Kaggle dataset, a relative output-folder argument
    (``--out_dir out``) points at the folder in ``/kaggle/working`` that colabkit also looks in for checkpoints
    (said once), so the script's saves can be written and a resume finds them."""
    args = tuple(spec.args)
    if not rt.is_kaggle or spec.checkpoint_dir is not None:
        return args
    from . import _kaggle, _resume

    found = _resume.output_dir(args)
    if found is None or Path(found[1]).is_absolute() or not _kaggle.is_input(workdir):
        return args
    flag, value = found
    out = list(args)
    for i in range(len(out) - 1, -1, -1):  # the last one given wins, as in argparse
        if out[i] == f"{flag}={value}":
            out[i] = f"{flag}={ckpt_dir}"
            break
        if out[i] == flag and i + 1 < len(out) and out[i + 1] == value:
            out[i + 1] = str(ckpt_dir)
            break
    _display.note(f"colabkit: {workdir} is a read-only Kaggle dataset: the script gets {flag} {ckpt_dir} instead of {value}")
    return tuple(out)


def checkpoint_folder(spec: Any) -> Path:
    """The checkpoint folder as asked: ``checkpoint_dir``, else the script's output-folder argument, else ``checkpoints``."""
    from . import _resume

    return _resume.asked(spec.checkpoint_dir, spec.args)[0]


def framework_peaks(report_path: Path) -> tuple[int | None, int | None, dict[int, int]]:
    """The ranks' torch peaks: the busiest rank's (allocated, reserved), and each rank's allocated peak."""
    per_rank: dict[int, int] = {}
    best: tuple[int | None, int | None] = (None, None)
    folder = report_path.parent
    try:
        names = sorted(p.name for p in folder.iterdir() if p.name.startswith(".framework-rank"))
    except OSError:
        return None, None, {}
    for name in names:
        rank_text = name[len(".framework-rank") :].split(".", 1)[0]
        data = _files.read_json(folder / name) or {}
        try:
            devices = data.get("devices") or []
            busiest = max(devices, key=lambda d: d.get("max_memory_allocated") or 0) if devices else None
        except (AttributeError, TypeError):
            busiest = None
        if busiest is not None and rank_text.isdigit():
            allocated, reserved = int(busiest.get("max_memory_allocated") or 0), int(busiest.get("max_memory_reserved") or 0)
            per_rank[int(rank_text)] = allocated
            if best[0] is None or allocated > best[0]:
                best = (allocated, reserved)
        try:
            (folder / name).unlink()
        except OSError:
            pass
    return best[0], best[1], per_rank


def resolve_script(script: str, workdir: Path) -> Path:
    """The script's path, against ``workdir`` when relative; ``ScriptNotFound`` names the ``.py`` files there."""
    path = Path(script)
    full = path if path.is_absolute() else workdir / path
    from . import _drive

    _drive.require_mounted(full.parent, purpose="read the script")  # Drive unmounted, dead or hung: say that
    try:
        if full.is_file():
            return full
    except OSError as exc:  # the working folder is on a Drive that died
        raise _rundir.folder_error(exc, full.parent, "read the script") from exc
    try:
        nearby = sorted(p.name for p in workdir.iterdir() if p.suffix == ".py")[:10]
    except OSError:
        nearby = []
    listing = ", ".join(nearby) if nearby else "no .py files"
    if full.is_dir():  # `colabkit run pkg/`: a folder, not a script
        inside = sorted(p.name for p in full.iterdir() if p.suffix == ".py")[:10]
        raise ScriptNotFound(
            f"{full} is a folder, not a script",
            f"Pass the .py file to run: {full} holds {', '.join(inside) if inside else 'no .py files'}.",
            path=full,
        )
    missing = ScriptNotFound(
        f"script not found: {full}",
        f"Check the name and the folder: {workdir} holds {listing}. Open the project first "
        "(colabkit.project('NAME')) or pass cwd= or an absolute path.",
        cli_hint=f"Check the name and the folder: {workdir} holds {listing}. cd into the project folder or "
        "give the script's full path (colabkit run /path/to/train.py).",
        path=full,
    )
    if _notebook.failed_setup() is not None:  # the project was never opened: that is the error to fix
        raise _notebook.not_finished_error("run()") from missing
    raise missing


def peaks(launch: Launch) -> _ranks.RankPeaks | None:
    """What the sampler keeps of each rank's memory, for a torchrun run."""
    return _ranks.RankPeaks() if launch.ranks is not None else None


def collect(launch: Launch | None, report_path: Path, stats: Any) -> tuple[int | None, int | None, dict[str, Any]]:
    """After the run: torch's peaks (the busiest rank's under torchrun), and what the result and
    ``summary.json`` keep of the ranks and of each GPU."""
    gpus = None
    if stats is not None and stats.devices:
        gpus = [
            {"index": d.index, "peak_used_bytes": d.peak_used_bytes, "total_bytes": d.total_bytes}
            for d in stats.devices
        ]
    if launch is None or launch.ranks is None:
        peak, reserved = _rundir.framework_report(report_path)
        return peak, reserved, {"ranks": None, "rank_tail": (), "gpus": gpus}
    peak, reserved, per_rank = framework_peaks(report_path)
    if launch.output is not None:
        launch.output.finish()
    _, tail = launch.failure()
    rank_stats = tuple(getattr(stats, "ranks", ()) or ())
    return peak, reserved, {"ranks": launch.summary(rank_stats, per_rank), "rank_tail": tail, "gpus": gpus}

