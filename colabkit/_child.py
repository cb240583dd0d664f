"""Runs inside the training child: ``python -m colabkit._child SCRIPT ARGS...`` behaves like ``python SCRIPT ARGS...``.

On top, at exit it reports the framework's own memory peaks (``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` per device) as JSON to the file named by ``$COLABKIT_CHILD_REPORT`` (``{rank}`` in
it: ``$RANK``, for each rank of a torchrun run), but only when the script imported torch and initialised
CUDA: this module never imports torch itself.

When the run asks for it (``$COLABKIT_CHILD_STEPS`` and friends), it also installs the memory watch
(``_memhook``): once the script imports torch, a row per optimizer step in ``steps.csv`` and PyTorch's
out-of-memory observer; this module and that one import nothing but the standard library.

Nothing else: no thread and no signal handler of its own. Ending the run when the launcher dies is the
job of the run's supervisor (``_supervisor``), a process of its own that survives whatever the script
does (``os.execv``, a held GIL, a broken pipe).
"""

from __future__ import annotations

import atexit
import builtins
import json
import os
import signal
import sys
import types

from . import _memhook

__all__ = ["ONE_STREAM_ENV", "REPORT_ENV", "framework_report", "main"]

REPORT_ENV = "COLABKIT_CHILD_REPORT"
# set for a torchrun rank: its stderr joins its stdout, so torchrun's tee copies one stream per rank in the
# order the rank wrote it (two streams of one rank, copied apart, could split a secret the masker must see whole)
ONE_STREAM_ENV = "COLABKIT_CHILD_ONE_STREAM"


def framework_report() -> dict[str, object] | None:
    """Per-device torch peaks if the script used CUDA through torch, else ``None``."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        cuda = torch.cuda
        if not cuda.is_initialized():
            return None
        devices = []
        for i in range(cuda.device_count()):
            devices.append(
                {
                    "index": i,
                    "max_memory_allocated": int(cuda.max_memory_allocated(i)),
                    "max_memory_reserved": int(cuda.max_memory_reserved(i)),
                }
            )
    except Exception:  # a CUDA error at exit must not change the script's exit status
        return None
    return {"framework": "torch", "version": str(getattr(torch, "__version__", "")), "devices": devices}


def _write_report(path: str) -> None:
    report = framework_report()
    if report is None:
        return
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(report, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def _strip_own_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _show(exc: BaseException) -> None:
    # the traceback printer reads exc.__traceback__, not the argument: strip it on the exception itself
    exc = exc.with_traceback(_strip_own_frames(exc.__traceback__))
    sys.excepthook(type(exc), exc, exc.__traceback__)


def main(argv: list[str] | None = None) -> None:
    """Run the script named by ``argv[0]`` as ``__main__`` with ``argv[1:]`` as its arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write("usage: python -m colabkit._child SCRIPT [ARGS...]\n")
        sys.exit(2)
    script = argv[0]
    if os.environ.pop(ONE_STREAM_ENV, None) == "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(1, 2)
    report_path = os.environ.pop(REPORT_ENV, None)
    if report_path and "{rank}" in report_path:  # under torchrun: one report per rank ($RANK, as torchrun sets it)
        report_path = report_path.replace("{rank}", os.environ.get("RANK", "0"))
    if report_path:
        atexit.register(_write_report, report_path)  # registered first, so it runs after the script's own
    path = os.path.abspath(script)
    try:
        with open(path, "rb") as fh:
            source = fh.read()
    except OSError as exc:
        # the message python itself prints for a missing script
        sys.stderr.write(f"{sys.executable}: can't open file {path!r}: [Errno {exc.errno}] {exc.strerror}\n")
        sys.exit(2)
    _memhook.install()  # before the script: it acts when the script imports torch (and removes its variables)
    sys.argv = argv
    sys.path[0] = os.path.dirname(path)
    module = types.ModuleType("__main__")
    module.__dict__.update({"__file__": path, "__builtins__": builtins, "__cached__": None, "__spec__": None})
    try:
        from importlib.machinery import SourceFileLoader

        module.__loader__ = SourceFileLoader("__main__", path)
    except ImportError:  # pragma: no cover
        pass
    sys.modules["__main__"] = module
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except KeyboardInterrupt as exc:
        # python reports an uncaught Ctrl-C by dying of SIGINT after the traceback; do the same
        _show(exc)
        sys.stderr.flush()
        atexit._run_exitfuncs()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        sys.exit(130)  # pragma: no cover - only if SIGINT is blocked
    except BaseException as exc:
        _show(exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
