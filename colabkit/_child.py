"""Runs inside the training child: ``python -m colabkit._child SCRIPT ARGS...`` behaves like ``python SCRIPT ARGS...``.

On top, at exit it reports the framework's own memory peaks (``torch.cuda.max_memory_allocated`` and
``max_memory_reserved`` per device) as JSON to the file named by ``$COLABKIT_CHILD_REPORT``, but only
when the script imported torch and initialised CUDA: this module never imports torch itself.

A daemon thread named ``colabkit-watchdog`` ends the run's process group if the process that started
it dies (SIGKILL, a kernel restart, a closed terminal): it records the parent's pid at start (or, when
the launcher named by ``$COLABKIT_CHILD_LAUNCHER`` died before that, the launcher's) and, once the
parent changes, starts a small helper outside the group that sends the group SIGTERM, then SIGKILL
``WATCHDOG_GRACE_S`` (or ``$COLABKIT_WATCHDOG_GRACE``) seconds later, so nothing is left holding the
GPU. It uses no ``prctl(PR_SET_PDEATHSIG)``, which fires when the parent *thread* exits (``run()`` may
be called from a thread). The thread is the one visible difference from ``python SCRIPT``:
``threading.enumerate()`` lists it (and on Python 3.12+ a direct ``os.fork()`` in the script warns
about a multi-threaded process).
"""

from __future__ import annotations

import atexit
import builtins
import json
import os
import signal
import sys
import threading
import time
import types

__all__ = [
    "GRACE_ENV",
    "LAUNCHER_ENV",
    "REPORT_ENV",
    "WATCHDOG_GRACE_S",
    "WATCHDOG_POLL_S",
    "framework_report",
    "main",
    "start_watchdog",
]

REPORT_ENV = "COLABKIT_CHILD_REPORT"
GRACE_ENV = "COLABKIT_WATCHDOG_GRACE"  # seconds, to change WATCHDOG_GRACE_S for one run
LAUNCHER_ENV = "COLABKIT_CHILD_LAUNCHER"  # the pid of the process that started the child (run() sets it)
WATCHDOG_POLL_S = 0.5  # how often the watchdog looks at the parent's pid
WATCHDOG_GRACE_S = 5.0  # after the parent died: SIGTERM to the group, SIGKILL this much later

# Runs outside the group (its own session), so the SIGTERM it sends cannot end it before the SIGKILL.
_REAPER = """
import os, signal, sys, time
pgid, grace = int(sys.argv[1]), float(sys.argv[2])
def send(sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        sys.exit(0)
send(signal.SIGTERM)
end = time.monotonic() + grace
while time.monotonic() < end:
    time.sleep(0.1)
    send(0)
send(signal.SIGKILL)
"""


def _end_group(pgid: int, grace: float) -> None:
    """SIGTERM to the group, SIGKILL ``grace`` seconds later, from a helper that survives the SIGTERM."""
    try:
        import subprocess

        subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _REAPER, str(pgid), str(grace)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return
    except Exception:  # no helper: do it from here (this process may die of the SIGTERM first)
        pass
    try:
        os.killpg(pgid, signal.SIGTERM)
        time.sleep(grace)
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _watch(parent: int, poll: float, grace: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll)
    _end_group(os.getpgid(0), grace)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc: trust kill()
        return True
    return state not in (b"Z", b"X")


def start_watchdog(
    poll: float = WATCHDOG_POLL_S, grace: float = WATCHDOG_GRACE_S, launcher: int | None = None
) -> threading.Thread:
    """Start the daemon thread that ends this process group once the parent process is gone.

    ``launcher`` is the pid of the process that started this one: if it is already dead (it died while
    this interpreter was starting, so the parent seen now is the one that adopted it), the group ends at once.
    """
    parent = os.getppid()
    if launcher is not None and parent != launcher and not _alive(launcher):
        parent = launcher
    thread = threading.Thread(
        target=_watch, args=(parent, poll, grace), name="colabkit-watchdog", daemon=True
    )
    thread.start()
    return thread


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
    report_path = os.environ.pop(REPORT_ENV, None)
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
    grace = os.environ.pop(GRACE_ENV, None)
    launcher_text = os.environ.pop(LAUNCHER_ENV, "")
    launcher = int(launcher_text) if launcher_text.isdigit() else None
    if os.getpgid(0) == os.getpid():  # only as the leader of its own group (as run() starts it)
        try:
            start_watchdog(grace=float(grace) if grace else WATCHDOG_GRACE_S, launcher=launcher)
        except ValueError:
            start_watchdog(launcher=launcher)
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
