"""The ``colabkit`` command: ``info``, ``doctor``, ``run``, ``watch``, ``mount``, ``runs``, ``demo``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

from ._version import __version__

__all__ = ["main"]

# command -> (module, help). The module defines ``_cli_configure_<command>(parser)`` and
# ``_cli_<command>(args) -> int``; modules import only the standard library at top, so building the
# parser stays light.
_COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("report", "show the runtime, GPUs, memory, disk and Drive in one report"),
    "doctor": ("report", "check the setup; exit status 1 when a check fails"),
    "mount": ("drive", "mount Google Drive (or the local stand-in) and print where"),
    "run": ("runner", "run a training script with live output and a GPU memory monitor"),
    "watch": ("monitoring", "live GPU view with per-process memory, like nvidia-smi -l"),
    "runs": ("history", "list the project's runs with status, duration and peak GPU memory"),
    "demo": ("demo", "create a sample project in the local Drive stand-in and train it"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colabkit",
        description="Verify the GPU, mount Google Drive and train with a live GPU memory monitor.",
    )
    parser.add_argument("--version", action="version", version=f"colabkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(f"colabkit.{module_name}")
        configure = getattr(module, f"_cli_configure_{name}")
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

    def show(
        message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
    ) -> None:
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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module_name = _COMMANDS[args.command][0]
    handler = getattr(importlib.import_module(f"colabkit.{module_name}"), f"_cli_{args.command}")
    from .errors import ColabkitError

    try:
        with (
            _warnings_as_lines(),
            _stop_on_term_and_hup() if args.command == "run" else contextlib.nullcontext(),
        ):
            return int(handler(args))
    except ColabkitError as exc:
        print(f"colabkit {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"colabkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the last resort: one line, not a traceback
        print(f"colabkit {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
