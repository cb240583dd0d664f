"""Every colabkit exception and warning, each carrying the fix as ``hint``.

Class tree::

    ColabkitError(Exception)                 message + hint
    ├── GpuError                             NVML or the framework failed on a GPU that exists
    │   ├── NoGpuError(GpuError, RuntimeError)      no usable NVIDIA GPU
    │   │   └── NotEnoughGpus(NoGpuError)           run(gpus=N) asked for more GPUs than are visible
    │   └── CudaMismatchError(GpuError)             torch's CUDA build does not suit the driver
    ├── MountError(ColabkitError, OSError)   Drive could not be mounted, flushed or used
    ├── ProjectNotFound(ColabkitError, FileNotFoundError)
    ├── InstallError(ColabkitError)          pip failed on the project's requirements
    ├── StageError(ColabkitError, OSError)   data could not be staged to local disk
    ├── CheckpointError(ColabkitError, OSError)  a checkpoint could not be written or read
    ├── ScriptNotFound(ColabkitError, FileNotFoundError)  run() was given a script that does not exist
    ├── SecretNotFound(ColabkitError, KeyError)  a secret asked for is in none of its sources
    ├── RunFailed(ColabkitError)             the training child did not finish
    │   └── CudaOutOfMemory(RunFailed)       ... because it ran out of GPU memory
    └── ReleaseError(ColabkitError)          the runtime could not be given back

    ColabkitWarning(UserWarning)             colabkit can go on, but you should know

An error is said to two audiences: a Python caller (``timeout=``, ``colabkit.mount(force=True)``) and a
person at the ``colabkit`` command (``--timeout``, ``colabkit mount --force``). Each error builds both
spellings where they differ (``cli_message``, ``cli_hint``); :meth:`ColabkitError.render` picks one.
Nothing outside this module edits an error's text after the fact.
"""

from __future__ import annotations

from pathlib import Path

from ._format import format_span

__all__ = [
    "CheckpointError",
    "ColabkitError",
    "ColabkitWarning",
    "CudaMismatchError",
    "CudaOutOfMemory",
    "GpuError",
    "InstallError",
    "MountError",
    "NoGpuError",
    "NotEnoughGpus",
    "ProjectNotFound",
    "ReleaseError",
    "RunFailed",
    "ScriptNotFound",
    "SecretNotFound",
    "StageError",
]

# the surfaces an error is said on: a Python caller, the colabkit command, a notebook cell (IPython)
API, CLI, NOTEBOOK = "api", "cli", "notebook"
TRACEBACK_ENV = "COLABKIT_TRACEBACK"  # set it (to 1) and a notebook shows colabkit errors with their full traceback
RESTART = "restart the runtime (Colab: Runtime → Restart session) or the Python process"


def _restore(cls: type[ColabkitError], state: dict[str, object]) -> ColabkitError:
    """Rebuild a pickled error with every field (``Exception``'s default pickling keeps only ``args``)."""
    exc = cls.__new__(cls)
    exc.__dict__.update(state)
    Exception.__init__(exc, state.get("message", ""))
    return exc


class ColabkitError(Exception):
    """Base class: ``message`` says what went wrong, ``hint`` says what to do about it.

    ``cli_message`` and ``cli_hint`` are the same for the ``colabkit`` command, where they differ.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        cli_message: str | None = None,
        cli_hint: str | None = None,
    ) -> None:
        self.message = message
        self.hint = hint
        self.cli_message = cli_message
        self.cli_hint = cli_hint
        Exception.__init__(self, message)

    def render(self, surface: str = API) -> str:
        """The message and, on its own line, the fix, as the surface spells them.

        ``"api"`` (``str(exc)``) is for Python callers and logs; ``"cli"`` uses the command line's spelling
        (``--timeout``); ``"notebook"`` is the API's spelling without what the cell already showed (a
        failing script's last lines).
        """
        message, hint = self.message, self.hint
        if surface == CLI:
            message = self.cli_message if self.cli_message is not None else message
            hint = self.cli_hint if self.cli_hint is not None else hint
        if surface == NOTEBOOK and self._on_screen() and message.endswith(self._on_screen()):
            message = message[: -len(self._on_screen())]
        return message if not hint else f"{message}\nHINT: {hint}"

    def _on_screen(self) -> str:
        """The end of the message that the cell has already shown (a failing script's last lines)."""
        return ""

    def __str__(self) -> str:
        return self.render(API)

    def _render_traceback_(self) -> list[str]:
        """What IPython shows for this error instead of a traceback: one short block, the fix in it.

        The cause chain stays on the exception (``__cause__``); with ``$COLABKIT_TRACEBACK`` set the
        notebook shows the whole traceback again.
        """
        import os

        if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            import traceback

            return [line.rstrip("\n") for line in traceback.format_exception(self)]
        lines = [f"\x1b[1;31m{type(self).__name__}\x1b[0m: {self.render(NOTEBOOK)}"]
        lines.append(f"(colabkit shows its errors short: %env {TRACEBACK_ENV}=1 and run the cell again for the traceback)")
        return "\n".join(lines).split("\n")

    def __reduce__(self) -> tuple[object, ...]:
        return (_restore, (type(self), dict(self.__dict__)))


class ColabkitWarning(UserWarning):
    """colabkit can go on, but something is not as it should be."""


class GpuError(ColabkitError):
    """NVML or the framework failed on a GPU."""


class NoGpuError(GpuError, RuntimeError):
    """No usable NVIDIA GPU; ``hint`` gives the fix for the current runtime, ``reason`` the short cause."""

    def __init__(
        self, message: str, hint: str | None = None, *, runtime: str | None = None, reason: str | None = None
    ) -> None:
        self.runtime = runtime
        self.reason = reason
        super().__init__(message, hint)

    @classmethod
    def for_runtime(cls, reason: str, kind: str, *, tpu: bool = False) -> NoGpuError:
        """The error for "no GPU here", said for the runtime ``kind`` (``"colab"``, ``"kaggle"``, ...) with its fix."""
        if kind == "colab" and tpu:
            message = f"This is a Colab TPU runtime: it has no NVIDIA GPU ({reason})."
        elif kind == "colab":
            message = f"No NVIDIA GPU on this Colab runtime ({reason})."
        elif kind == "kaggle":
            message = f"No NVIDIA GPU in this Kaggle notebook ({reason})."
        elif tpu:
            message = f"This is a TPU runtime: it has no NVIDIA GPU ({reason})."
        else:
            message = f"No NVIDIA GPU found ({reason})."
        return cls(message, no_gpu_fix(kind, tpu=tpu), runtime=kind, reason=reason)


NO_GPU = "no GPU: running on the CPU, much slower"  # the one wording for "colabkit goes on without a GPU"


def no_gpu_note(kind: str, *, tpu: bool = False) -> str:
    """The one sentence for "no GPU here, going on without": the fact, then the fix for the runtime ``kind``."""
    return f"{NO_GPU}. {no_gpu_fix(kind, tpu=tpu)}"


def no_gpu_fix(kind: str, *, tpu: bool = False) -> str:
    """How to get a GPU on the runtime ``kind``: the one text every "no GPU" message ends with."""
    if kind == "colab":
        return (
            "In the Colab menu choose Runtime → Change runtime type → T4 GPU → Save, then re-run the notebook "
            'from the top (the new runtime starts empty). If Colab answers "Cannot connect to GPU backend", '
            "you have reached Colab's GPU usage limits: wait a few hours and try again, or use Colab Pro."
        )
    if kind == "kaggle":
        return (
            "In the notebook editor open Settings → Accelerator → GPU T4 x2 (two GPUs; or GPU P100, one; GPUs "
            "need a phone-verified Kaggle account: Settings → Phone verification), then re-run the cell."
        )
    if tpu:
        return "Start a runtime or machine with an NVIDIA GPU instead of a TPU."
    return (
        "Install the NVIDIA driver for this machine's GPU and check that `nvidia-smi` lists it; "
        "in a container, start it with GPU access (docker run --gpus all ...)."
    )


class NotEnoughGpus(NoGpuError):
    """``run(gpus=N)`` asked for more GPUs than this machine shows; ``wanted`` and ``visible`` are counts."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        wanted: int = 0,
        visible: int = 0,
        runtime: str | None = None,
        cli_message: str | None = None,
        cli_hint: str | None = None,
    ) -> None:
        self.wanted = wanted
        self.visible = visible
        super().__init__(message, hint, runtime=runtime, reason="not_enough")
        self.cli_message, self.cli_hint = cli_message, cli_hint

    @classmethod
    def asked(cls, wanted: int, visible: int, kind: str) -> NotEnoughGpus:
        """The error for ``gpus=wanted`` on a machine that shows ``visible`` GPUs, with the fix for ``kind``."""
        seen = {0: "no GPU", 1: "1 GPU"}.get(visible, f"{visible} GPUs")
        message = f"gpus={wanted} asks for {wanted} GPUs, but this machine shows {seen}"
        if kind == "kaggle":
            fix = (
                "In the notebook editor open Settings → Accelerator → GPU T4 x2 (the one Kaggle accelerator "
                "with two GPUs), then re-run the notebook from the top"
            )
        elif kind == "colab":
            fix = "A Colab runtime has one GPU: pass gpus=1 (or nproc=N for N ranks on it), or use Kaggle's GPU T4 x2"
        else:
            fix = "Use a machine with that many GPUs"
        visible_fix = f"; or pass gpus={visible} (gpus='all' takes every visible GPU)" if visible else ""
        cli = fix.replace("gpus=1", "--gpus 1").replace("nproc=N", "--nproc N")
        cli_visible = f"; or pass --gpus {visible}" if visible else ""
        return cls(
            message,
            fix + visible_fix + ".",
            wanted=wanted,
            visible=visible,
            runtime=kind,
            cli_message=message.replace(f"gpus={wanted}", f"--gpus {wanted}"),
            cli_hint=cli + cli_visible + ".",
        )


class CudaMismatchError(GpuError):
    """PyTorch cannot use the GPU although NVML sees it (CPU build, or CUDA build newer than the driver)."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        torch_version: str | None = None,
        torch_cuda: str | None = None,
        driver_cuda: str | None = None,
    ) -> None:
        self.torch_version = torch_version
        self.torch_cuda = torch_cuda
        self.driver_cuda = driver_cuda
        super().__init__(message, hint)


class MountError(ColabkitError, OSError):
    """Drive could not be mounted, flushed or used at ``mountpoint``; ``reason`` names the failure."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        mountpoint: str | Path | None = None,
        method: str | None = None,
        reason: str | None = None,
        cli_hint: str | None = None,
    ) -> None:
        self.mountpoint = str(mountpoint) if mountpoint is not None else None
        self.method = method
        self.reason = reason  # short code, e.g. "timeout", "credentials", "not_empty", "not_colab", "dead"
        ColabkitError.__init__(self, message, hint, cli_hint=cli_hint)

    def __str__(self) -> str:  # OSError would otherwise print its args tuple
        return ColabkitError.__str__(self)


class ProjectNotFound(ColabkitError, FileNotFoundError):
    """The project folder does not exist; ``candidates`` holds the closest folder names."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        path: str | Path | None = None,
        candidates: tuple[str, ...] = (),
        cli_hint: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.candidates = tuple(candidates)
        ColabkitError.__init__(self, message, hint, cli_hint=cli_hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class InstallError(ColabkitError):
    """``pip install -r requirements.txt`` failed; ``output_tail`` holds pip's last lines."""

    def __init__(
        self, message: str, hint: str | None = None, *, returncode: int | None = None, output_tail: str = ""
    ) -> None:
        self.returncode = returncode
        self.output_tail = output_tail
        super().__init__(message, hint)


class StageError(ColabkitError, OSError):
    """Data could not be staged from Drive to local disk."""

    def __init__(
        self, message: str, hint: str | None = None, *, needed_bytes: int | None = None, free_bytes: int | None = None
    ) -> None:
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        ColabkitError.__init__(self, message, hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class CheckpointError(ColabkitError, OSError):
    """A checkpoint at ``path`` could not be written or read."""

    def __init__(self, message: str, hint: str | None = None, *, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        ColabkitError.__init__(self, message, hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class ScriptNotFound(ColabkitError, FileNotFoundError):
    """The script given to ``run()`` does not exist at ``path``."""

    def __init__(
        self, message: str, hint: str | None = None, *, path: str | Path | None = None, cli_hint: str | None = None
    ) -> None:
        self.path = str(path) if path is not None else None
        ColabkitError.__init__(self, message, hint, cli_hint=cli_hint)

    def __str__(self) -> str:
        return ColabkitError.__str__(self)


class SecretNotFound(ColabkitError, KeyError):
    """The secret ``name`` is in none of the sources colabkit reads; ``tried`` says what each source answered.

    The message names the secret and the sources, never a value.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        name: str = "",
        tried: tuple[tuple[str, str], ...] = (),
        cli_hint: str | None = None,
    ) -> None:
        self.name = name
        self.tried = tuple(tried)  # (source, what it answered), in the order asked
        ColabkitError.__init__(self, message, hint, cli_hint=cli_hint)

    def __str__(self) -> str:  # KeyError would otherwise show the repr of its argument
        return ColabkitError.__str__(self)


class RunFailed(ColabkitError):
    """The training child did not finish: it exited non-zero, or colabkit stopped it (timeout, budget, Stop).

    ``stderr_tail`` holds the last lines of the child's output (stdout and stderr together, in the order
    they were written); ``log_path`` the full log; ``result`` the ``RunResult``.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        returncode: int | None = None,
        stderr_tail: str = "",
        log_path: str | Path | None = None,
        result: object | None = None,
        cli_message: str | None = None,
        cli_hint: str | None = None,
        on_screen: str = "",
    ) -> None:
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        self.log_path = str(log_path) if log_path is not None else None
        self.result = result
        self.on_screen = on_screen  # the end of ``message`` the run's own output already showed (its last lines)
        super().__init__(message, hint, cli_message=cli_message, cli_hint=cli_hint)

    def _on_screen(self) -> str:
        return getattr(self, "on_screen", "")  # an error pickled before the field existed has none

    @classmethod
    def exited(
        cls, script: str, ending: str, *, tail: str, log_path: str | Path, **facts: object
    ) -> RunFailed:
        """The script exited non-zero (``ending`` says how: ``exit status 1``, ``signal SIGKILL``)."""
        said = f"; last lines of its output:\n{tail}" if tail else " and wrote no output"
        if _shows_an_error(tail):
            fix = f"Fix the error shown above and run again; the full output is in {log_path}"
        elif tail:
            fix = (
                f"Its output shows no error: look for what ends it with {ending} (sys.exit, exit()), then run "
                f"again; the full output is in {log_path}"
            )
        else:
            fix = f"Run it again with a print at its start to see how far it gets; its log is {log_path}"
        return cls(
            f"{script} exited with {ending}{said}",
            fix,
            cli_message=f"{script} exited with {ending}" + ("" if tail else " and wrote no output"),
            on_screen=said if tail else "",
            stderr_tail=tail,
            log_path=log_path,
            **facts,  # type: ignore[arg-type]
        )

    @classmethod
    def rank_failed(
        cls,
        script: str,
        *,
        rank: int,
        world: int,
        ending: str,
        tail: str,
        log_path: str | Path,
        **facts: object,
    ) -> RunFailed:
        """One rank of a torchrun run failed first (``ending``: ``exit status 1``); torchrun ended the others.

        ``tail`` holds that rank's own last lines, without the ``[rankN]:`` marks.
        """
        head = f"{script}: rank {rank} of {world} exited with {ending}, and torchrun ended the other ranks"
        said = f"; last lines of rank {rank}:\n{tail}" if tail else f"; rank {rank} wrote no output"
        return cls(
            head + said,
            f"Fix the error rank {rank} shows and run again; every rank's output is in {log_path}, "
            f"each line marked [rank{rank}]:",
            cli_message=head + ("" if tail else f"; rank {rank} wrote no output"),
            on_screen=said if tail else "",
            stderr_tail=tail,
            log_path=log_path,
            **facts,  # type: ignore[arg-type]
        )

    @classmethod
    def stopped(
        cls,
        script: str,
        duration: str,
        *,
        by: str,
        log_path: str | Path,
        tail: str = "",
        timeout: float | None = None,
        budget: float | None = None,
        grace: float | None = None,
        vm_limit: bool = False,
        ending: str = "",
        limit_label: str | None = None,
        **facts: object,
    ) -> RunFailed:
        """colabkit stopped the script: ``by`` is ``"timeout"``, ``"interrupt"`` or ``"budget"``.

        ``limit_label`` names the machine's limit that ended the run before its budget (``vm_limit``):
        ``the Kaggle session's ~12 h limit``; the Colab VM's ~12 h limit when not given.
        """
        if by == "budget":
            limit_api = f"budget={format_span(budget)}" if budget is not None else "its budget"
            limit_cli = f"--budget {format_span(budget)}" if budget is not None else "its budget"
            if vm_limit:
                label = limit_label or "the Colab VM's ~12 h limit"
                limit_api = f"{label} (before {limit_api})"
                limit_cli = f"{label} (before {limit_cli})"
            head = f"{script} was stopped by {{}} after {duration} ({ending})"
            fix = (
                "Catch SIGTERM in the script, save a checkpoint and exit 0 within {} (see docs/long-runs.md), "
                "or pass a larger {}; the output so far is in " + str(log_path)
            )
            message, cli_message = head.format(limit_api), head.format(limit_cli)
            hint = fix.format(f"grace={format_span(grace)}", "budget=")
            cli_hint = fix.format(f"--grace {format_span(grace)}", "--budget")
        elif by == "timeout" and timeout is not None:
            message = f"{script} was stopped by timeout={format_span(timeout)} after {duration}"
            cli_message = f"{script} was stopped by --timeout {format_span(timeout)} after {duration}"
            hint = f"Pass a larger timeout= (or timeout=None) to run(); the output so far is in {log_path}"
            cli_hint = f"Pass a larger --timeout (or none); the output so far is in {log_path}"
        else:
            message = cli_message = f"{script} was stopped by an interrupt after {duration}"
            hint = cli_hint = f"Run it again when you are ready; the output so far is in {log_path}"
        return cls(
            message,
            hint,
            cli_message=cli_message,
            cli_hint=cli_hint,
            stderr_tail=tail,
            log_path=log_path,
            **facts,  # type: ignore[arg-type]
        )

    @classmethod
    def saved_at_budget(
        cls,
        script: str,
        duration: str,
        *,
        budget: float | None,
        log_path: str | Path,
        tail: str = "",
        limit_label: str | None = None,
        **facts: object,
    ) -> RunFailed:
        """The script exited 0 on the budget's SIGTERM: not a failure of the script, but not the end of its work.

        ``limit_label`` names the machine's limit that came before the budget (``the Kaggle session's ~12 h limit``).
        """
        head = f"{script} was stopped by {{}} after {duration}: it exited 0 on SIGTERM, before the end of its work"
        fix = (
            "Run it again with {} to go on from its last checkpoint (docs/long-runs.md), or pass a larger {}; "
            f"the output is in {log_path}"
        )
        api, cli = f"budget={format_span(budget)}", f"--budget {format_span(budget)}"
        if limit_label is not None:
            api, cli = f"{limit_label} (before {api})", f"{limit_label} (before {cli})"
        return cls(
            head.format(api),
            fix.format("resume=True", "budget="),
            cli_message=head.format(cli),
            cli_hint=fix.format("--resume", "--budget"),
            stderr_tail=tail,
            log_path=log_path,
            **facts,  # type: ignore[arg-type]
        )

    @classmethod
    def stopped_for_creep(
        cls, script: str, duration: str, *, saved: str, grew: str, log_path: str | Path, tail: str = "", **facts: object
    ) -> RunFailed:
        """GPU memory kept growing and was about to fill the GPU: colabkit sent the budget's SIGTERM early.

        ``saved`` says how the script ended (``it exited 0 on SIGTERM``); ``grew`` how its memory grew.
        """
        head = f"{script} was stopped after {duration} before it ran out of GPU memory ({saved})"
        fix = "Keep numbers, not tensors, from one step to the next, then run again with {}; the output is in " + str(
            log_path
        )
        return cls(
            f"{head}: {grew}",
            fix.format("resume=True to go on from the last checkpoint"),
            cli_message=head,
            cli_hint=fix.format("--resume"),
            stderr_tail=tail,
            log_path=log_path,
            **facts,  # type: ignore[arg-type]
        )


def _shows_an_error(output: str) -> bool:
    """Whether a script's last lines show an error (a traceback, ``...Error: ...``, argparse's ``error:``)."""
    import re

    return bool(re.search(r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b|\berror\b", output, re.I))


class CudaOutOfMemory(RunFailed):
    """The child ran out of GPU memory; ``peak_bytes`` is the most colabkit saw in use."""

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        peak_bytes: int | None = None,
        total_bytes: int | None = None,
        **kwargs: object,
    ) -> None:
        self.peak_bytes = peak_bytes
        self.total_bytes = total_bytes
        super().__init__(message, hint, **kwargs)  # type: ignore[arg-type]


class ReleaseError(ColabkitError):
    """The Colab runtime could not be given back (or was kept because the Drive flush failed)."""
