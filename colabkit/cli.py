"""The ``colabkit`` command (``python -m colabkit``): every subcommand's options, handler and output, in one module.

Building the parser imports nothing but the standard library; each handler imports what it needs.
Errors are said once, as the command line spells them (``--timeout``, not ``timeout=``: see
``ColabkitError.render``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._version import __version__

__all__ = ["main"]

_Handler = Callable[[argparse.Namespace], int]
TIMED_OUT = 124  # `colabkit run`'s exit status when --timeout or --budget stopped the script, like timeout(1)
PIPE_CLOSED = 141  # the reader of stdout went away (`colabkit info | head -1`): 128 + SIGPIPE, as cat's


# -- info, doctor ----------------------------------------------------------------------------------
def _info(args: argparse.Namespace) -> int:
    from ._report import info

    print(info())
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from ._report import doctor

    result = doctor()
    print(result)
    return 0 if result.ok else 1


# -- mount -----------------------------------------------------------------------------------------
def _configure_mount(parser: argparse.ArgumentParser) -> None:
    methods = ("auto", "drive", "ocamlfuse", "local")
    parser.add_argument("--method", choices=methods, default="auto", help="default: drive on Colab, else local")
    parser.add_argument("--mountpoint", help="where to mount (default depends on the method)")
    parser.add_argument("--readonly", action="store_true", help="mount read-only")
    parser.add_argument("--force", action="store_true", help="remount even if already mounted")
    parser.add_argument(
        "--timeout", type=float, default=None,
        help="seconds for the whole mount, every try included (default: a first try of 120 s and, if it times out, "
        "one retry of 600 s)",
    )
    parser.add_argument("--service-account", help="ocamlfuse: service account key file")
    parser.add_argument("--state-dir", help="ocamlfuse: pre-authorized ~/.gdfuse/<label>/ folder to copy")
    parser.add_argument("--client-id", help="ocamlfuse: your own OAuth client id (-headless sign-in)")
    parser.add_argument("--label", help="ocamlfuse: account label (default 'default')")


def _mount(args: argparse.Namespace) -> int:
    from ._display import note
    from ._drive import mount

    m = mount(
        args.method,
        args.mountpoint,
        readonly=args.readonly,
        force=args.force,
        timeout=args.timeout,
        service_account=args.service_account,
        state_dir=args.state_dir,
        client_id=args.client_id,
        label=args.label,
    )
    note(f"mounted: {m.describe()}")
    return 0


# -- run -------------------------------------------------------------------------------------------
def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "colabkit's options come before SCRIPT; everything after SCRIPT goes to the script, e.g. "
        "colabkit run --budget 2h train.py --epochs 3 --lr 3e-4"
    )
    parser.add_argument("script", help="the Python script to run")
    script_args = parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's own arguments")
    script_args.required = False  # with no script, argparse names only what is missing: the script
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between GPU samples (default 1)")
    parser.add_argument("--log-dir", default="runs", help="folder for run folders (default runs)")
    parser.add_argument(
        "--timeout", type=float, default=None,
        help="seconds after which the script is stopped like Ctrl-C, wherever it is (exit status 124); "
        "for a run that should save before its time is up, use --budget",
    )  # fmt: skip
    parser.add_argument("--no-monitor", action="store_true", help="do not sample the GPU")
    parser.add_argument("--raw", action="store_true", help="run python SCRIPT without colabkit's bootstrap")
    parser.add_argument("--kill-stale", action="store_true", help="end processes left alive by earlier runs first")
    parser.add_argument(
        "--resume", action="store_true", help="hand the newest checkpoint to the script ($COLABKIT_RESUME)"
    )
    parser.add_argument(
        "--resume-arg",
        default=None,
        metavar="TEMPLATE",
        help="also pass it as arguments: '--resume {path}', or '--init_from=resume' (no {path}: the script finds it)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="the script's checkpoint folder (default: its --output_dir/--out_dir/--default_root_dir, else checkpoints)",
    )
    parser.add_argument(
        "--budget",
        default=None,
        help="how long the script may run, e.g. 2h, 90m, 45s, 1h30m or seconds: it gets SIGTERM --grace before the "
        "end to save a checkpoint, SIGKILL at the end (exit status 124); --resume goes on from what it saved",
    )
    parser.add_argument(
        "--grace", default=None, help="seconds between SIGTERM and SIGKILL at the end of the budget (default 60)"
    )
    history = parser.add_mutually_exclusive_group()
    history.add_argument(
        "--memory-history", dest="memory_history", action="store_true", default=None,
        help="record PyTorch's allocation history: an out-of-memory error names the lines holding the memory "
        "(default: only for the run after one that ran out of memory without it)",
    )  # fmt: skip
    history.add_argument(
        "--no-memory-history", dest="memory_history", action="store_false",
        help="never record it, not even after an out-of-memory error",
    )  # fmt: skip
    parser.add_argument(
        "--find-batch", action="store_true",
        help="first measure the largest --batch-size that fits with short probe runs (the run keeps its arguments)",
    )  # fmt: skip
    parser.add_argument(
        "--gpus", type=_gpu_count, default=None, metavar="N",
        help="start torchrun --standalone with one rank per GPU: a number, or 'all'",
    )  # fmt: skip
    parser.add_argument(
        "--nproc", type=int, default=None, metavar="N", help="start torchrun with N ranks, with or without GPUs (gloo)"
    )
    parser.add_argument(
        "--secret", action="append", default=[], dest="secrets", metavar="NAME",
        help="put this secret (from Colab's or Kaggle's secrets, the environment or the project's .env) in the "
        "script's environment, masked in its output; repeat for more",
    )  # fmt: skip


def _gpu_count(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus {text!r}: pass a number of GPUs, or 'all'") from None


def _run(args: argparse.Namespace) -> int:
    from ._run import execute
    from ._spec import RunSpec

    try:
        spec = RunSpec.build(
            args.script,
            args.args,
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
            memory_history=args.memory_history,
            find_batch=args.find_batch,
            gpus=args.gpus,
            nproc=args.nproc,
            secrets=tuple(args.secrets),
            surface="cli",
        )
    except ValueError as exc:  # a bad --budget, --grace, --interval, --resume-arg, --gpus/--nproc, --find-batch...
        text = str(exc).replace("gpus=", "--gpus ").replace("nproc=", "--nproc ")
        print(f"colabkit run: {text}", file=sys.stderr)
        return 2
    from .errors import RunFailed

    try:
        result = execute(spec)
    except RunFailed as exc:  # the output itself is on screen already: say why it did not finish, and the fix
        print(f"colabkit run: {exc.render('cli')}", file=sys.stderr)
        result = exc.result
    if result.reason in ("timeout", "budget"):
        return TIMED_OUT  # as timeout(1) does, whatever the script did when it was told to stop
    rc = result.returncode
    if rc is None:
        return 1
    return 128 - rc if rc < 0 else rc


# -- watch -----------------------------------------------------------------------------------------
def _configure_watch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--interval", type=float, default=2.0, metavar="SECONDS", help="seconds between updates (default 2)"
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N updates")


def _watch_frame(source: Any, processes: list[Any], ram: Any) -> str:
    """One frame of ``colabkit watch``: each GPU's memory, utilisation, temperature and power, its processes, RAM."""
    from ._format import format_bytes as fb
    from ._format import na

    lines = [time.strftime("%H:%M:%S")]
    try:
        count = int(source.device_count())
    except Exception:
        count = 0
    for i in range(count):
        try:
            r = source.read(i)
            used, total, util, temp, power = r.used, r.total, r.util, r.temp, r.power_w
        except Exception:
            used = total = util = temp = power = None
        lines.append(
            f"GPU {i}: {fb(used)} / {fb(total)}  util {na(util, '%')}  "
            f"{na(temp, '°C')}  {na(power if power is None else round(power), ' W')}"
        )
        for proc in processes:
            if proc.gpu_index == i:
                lines.append(f"  pid {proc.pid:>7}  {fb(proc.used_bytes):>10}  {(proc.command or '')[:60]}")
    if ram is not None:
        lines.append(f"RAM: {fb(ram.total - ram.available)} / {fb(ram.total)}")
    return "\n".join(lines)


def _watch(args: argparse.Namespace) -> int:
    from . import _display, _gpu, _procs
    from ._monitor import MIN_INTERVAL, default_source
    from ._nvml import no_gpu_error

    interval = max(MIN_INTERVAL, float(args.interval))
    source = default_source()
    try:
        count = int(source.device_count())
    except Exception:
        count = 0
    if count == 0:  # nothing to watch: say so once instead of every frame
        raise no_gpu_error("nothing to watch")
    stop = threading.Event()
    n = 0
    while args.count is None or n < args.count:
        try:
            processes = _gpu.gpu_processes()
        except Exception:  # a lost GPU: the frame says n/a
            processes = []
        try:
            ram = _procs.host_memory()
        except Exception:
            ram = None
        _display.frame(_watch_frame(source, processes, ram), first=n == 0)
        if _display.screen_gone():  # `colabkit watch | head`: nobody reads the frames any more
            return PIPE_CLOSED
        n += 1
        if args.count is not None and n >= args.count:
            break
        stop.wait(interval)
    return 0


# -- runs, demo ------------------------------------------------------------------------------------
def _configure_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "project",
        nargs="?",
        default=None,
        metavar="PROJECT",
        help="project folder or name on Drive (default: the current directory)",
    )
    parser.add_argument("--log-dir", default="runs", help="runs folder inside the project (default: runs)")


def _runs(args: argparse.Namespace) -> int:
    from ._history import runs

    print(runs(args.project, log_dir=args.log_dir).table())
    return 0


def _configure_attach(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run", nargs="?", default=None, metavar="RUN", help="the run's name as `colabkit runs` lists it (default: the newest running one)"
    )
    parser.add_argument("--project", default=None, help="project folder or name on Drive (default: the current directory)")
    parser.add_argument("--log-dir", default="runs", help="runs folder inside the project (default: runs)")
    parser.add_argument("--lines", type=int, default=20, help="how many of its last lines to show first (default 20)")


def _attach(args: argparse.Namespace) -> int:
    from ._attach import attach

    attach(args.run, project=args.project, log_dir=args.log_dir, lines=args.lines)  # Ctrl-C detaches: the run goes on
    return 0


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=3, help="epochs to train (default 3)")
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch (default 200)")


def _demo(args: argparse.Namespace) -> int:
    from ._demo import demo

    result = demo(epochs=args.epochs, steps=args.steps, surface="cli")
    return int(result.returncode or 0)


def _no_options(parser: argparse.ArgumentParser) -> None:
    """A command that takes no options."""


# command -> (help, configure the parser, handler)
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], _Handler]] = {
    "info": ("show the runtime, GPUs, memory, disk and Drive in one report", _no_options, _info),
    "doctor": ("check the setup; exit status 1 when a check fails", _no_options, _doctor),
    "mount": ("mount Google Drive (or the local stand-in) and print where", _configure_mount, _mount),
    "run": ("run a training script with live output and a GPU memory monitor", _configure_run, _run),
    "watch": ("live GPU view with per-process memory, like nvidia-smi -l", _configure_watch, _watch),
    "runs": ("list the project's runs with status, duration and peak GPU memory", _configure_runs, _runs),
    "attach": ("show a running run's output and status from where it is now; Ctrl-C detaches", _configure_attach, _attach),
    "demo": ("create a sample project in the local Drive stand-in and train it", _configure_demo, _demo),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colabkit",
        description="Verify the GPU, mount Google Drive and train with a live GPU memory monitor.",
    )
    parser.add_argument("--version", action="version", version=f"colabkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, configure, _) in _COMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _as_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stop_on_term_and_hup() -> Iterator[None]:
    """SIGTERM and SIGHUP (``timeout``, a closed terminal) stop a run like Ctrl-C: SIGINT, SIGTERM, SIGKILL.

    A signal that is ignored (``nohup colabkit run ...``) stays ignored.
    """
    saved: dict[int, Any] = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue
            saved[sig] = signal.signal(sig, _as_keyboard_interrupt)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """A ``ColabkitWarning`` shows as one line, ``colabkit: <message>``, not with its source line."""
    import warnings

    from .errors import ColabkitWarning

    original = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, ColabkitWarning):
            print(f"colabkit: {message}", file=sys.stderr if file is None else file)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = original


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered would fail again at exit ("Exception ignored ...")."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = _COMMANDS[args.command][2]
    from .errors import ColabkitError

    try:
        with (
            _warnings_as_lines(),
            _stop_on_term_and_hup() if args.command == "run" else contextlib.nullcontext(),
        ):
            return int(handler(args))
    except ColabkitError as exc:
        print(f"colabkit {args.command}: {exc.render('cli')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"colabkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `colabkit info | head -1`: the reader has what it wanted; stop without a word
        _quiet_stdout()
        return PIPE_CLOSED
    except OSError as exc:  # the last resort: one line, not a traceback
        print(f"colabkit {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
