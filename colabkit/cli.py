"""The ``colabkit`` command: ``info``, ``doctor``, ``run``, ``watch``, ``mount``, ``runs``, ``demo``."""

from __future__ import annotations

import argparse
import importlib
import sys

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
        return int(handler(args))
    except ColabkitError as exc:
        print(f"colabkit {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"colabkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
