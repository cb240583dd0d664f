"""``run()``: the training script as a child process with live output, a GPU monitor and a run folder.

The child runs in its own process group through ``python -m colabkit._child`` (which behaves like
``python SCRIPT``). Two reader threads put its stdout and stderr on one queue; the calling thread (a
notebook cell's own thread, which is the only one Colab renders from) writes the log, draws the
throttled output and the status line, and on Stop, timeout or KeyboardInterrupt ends the whole group:
SIGINT, then SIGTERM, then SIGKILL, until no process of the group is left.
"""

from __future__ import annotations

import codecs
import collections
import datetime as _dt
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import display, oom, runtime
from .errors import ColabkitError, CudaOutOfMemory, RunFailed, ScriptNotFound
from .monitoring import MIN_INTERVAL, Sample, Sampler, Stats

__all__ = ["RunResult", "run"]

SCHEMA = 1
INT_GRACE_S = 10.0  # after SIGINT, time for the script to save and exit before SIGTERM
TERM_GRACE_S = 5.0  # after SIGTERM, before SIGKILL
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the kernel to reap the group
PIPE_GRACE_S = 1.0  # after the child exits, how long its leftovers may keep the pipes open
LOG_FLUSH_S = 1.0  # a disconnect loses at most this much of output.log
STDERR_TAIL = 20
_DRAIN_MAX = 256  # queue items handled between two screen checks

# Called by the run loop on every turn with the live _Run (tests raise KeyboardInterrupt from it).
_loop_hook: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class RunResult:
    """What a run did: exit status, time, where its files are, and what the GPU monitor saw.

    ``status`` is ``"finished"``, ``"failed"`` or ``"interrupted"``. ``framework_peak_bytes`` is the
    child's own ``torch.cuda.max_memory_allocated()`` on its busiest GPU (``None`` without torch/CUDA).
    ``attribution`` says how ``stats.child_peak_gpu_bytes`` was found: ``"pid"``, ``"new-pids"`` or ``"baseline"``.

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
    reason: str | None = None  # "interrupt" | "timeout" when interrupted
    timeout: float | None = None

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
            + (f"; last lines of stderr:\n{tail}" if tail else " and wrote nothing to stderr"),
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
            lines.append(self.stats.describe())
        if self.framework_peak_bytes is not None:
            lines.append(
                f"torch peak: {fb(self.framework_peak_bytes)} allocated, {fb(self.framework_reserved_bytes)} reserved"
            )
        lines.append(f"log: {self.log_path}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = [f"status={self.status!r}", f"returncode={display.na(self.returncode)}"]
        parts.append(f"duration={display.format_duration(self.duration_s)}")
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
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError(
                "RunResult.plot() needs matplotlib, which is not installed: run `pip install matplotlib` "
                "(or `pip install colabkit-gpu[plot]`)"
            ) from None
        out = Path(path) if path is not None else self.log_dir / "gpu.png"
        fig = Figure(figsize=(9, 5))
        mem, util = fig.subplots(2, 1, sharex=True)
        ts = [s.t for s in self.samples]
        gib = 1024**3
        count = max((len(s.used) for s in self.samples), default=0)
        for i in range(count):
            mem.plot(ts, [_nan(s.used[i], gib) for s in self.samples], label=f"GPU{i} used")
            util.plot(ts, [_nan(s.util[i], 1) for s in self.samples], label=f"GPU{i}")
            totals = [s.total[i] for s in self.samples if s.total[i] is not None]
            if totals:
                mem.axhline(totals[-1] / gib, linestyle="--", linewidth=0.8, color="grey")
        if any(s.child_gpu_bytes is not None for s in self.samples):
            mem.plot(ts, [_nan(s.child_gpu_bytes, gib) for s in self.samples], label="child (GPU)")
        if any(s.child_rss_bytes is not None for s in self.samples):
            mem.plot(
                ts, [_nan(s.child_rss_bytes, gib) for s in self.samples], label="child RAM", linestyle=":"
            )
        mem.set_ylabel("GiB")
        mem.set_title(f"{self.script}: {self.status}")
        mem.legend(loc="upper left", fontsize="small")
        util.set_ylabel("GPU util %")
        util.set_ylim(0, 105)
        util.set_xlabel("seconds")
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        if runtime.display_mode() == "notebook":
            try:
                from IPython.display import Image
                from IPython.display import display as ipy_display

                ipy_display(Image(filename=str(out)))
            except ImportError:
                pass
        return out


def _nan(value: int | float | None, scale: float) -> float:
    return float("nan") if value is None else value / scale


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
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _project_dir() -> Path | None:
    try:
        from . import projects
    except ImportError:
        return None
    try:
        current = projects.current()
    except Exception:
        return None
    return Path(current.path) if current is not None else None


def _new_run_dir(root: Path, stem: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    for n in range(1, 1000):
        candidate = root / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise ColabkitError(f"could not create a run folder in {root}", f"Remove old run folders from {root}")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return (
        _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


# -- process groups -------------------------------------------------------------------------------
def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _protected_pids() -> set[int]:
    """This process and its ancestors: never ended as 'stale'."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
            pid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
    pids.add(1)
    return pids


@dataclass(frozen=True)
class _Stale:
    pid: int
    run_dir: Path
    gpu_bytes: int | None
    command: str


def _find_stale(runs_root: Path) -> list[_Stale]:
    """Processes still alive that an earlier run in ``runs_root`` started (its child or the child's group)."""
    import psutil

    if not runs_root.is_dir():
        return []
    boot = _boot_id()
    protected = _protected_pids()
    found: list[_Stale] = []
    holders: dict[int, int] | None = None
    for summary_path in sorted(runs_root.glob("*/summary.json")):
        try:
            data = json.loads(summary_path.read_text(encoding="utf-8"))
            pid = int(data["pid"])
            created = float(data["pid_create_time"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if data.get("boot_id") and boot and data["boot_id"] != boot:
            continue
        try:  # cheap: is there any process in that group at all?
            os.killpg(pid, 0)
        except ProcessLookupError:
            continue
        except (PermissionError, OSError):
            pass
        try:  # the leader alive with another start time: the pid was recycled, not ours
            if abs(psutil.Process(pid).create_time() - created) > 0.5:
                continue
        except psutil.Error:
            pass  # the leader is gone; its group id cannot be reused while members live
        pids = []
        for member in _group_members(pid) if pid > 1 else []:
            try:
                if psutil.Process(member).create_time() + 0.5 >= created and member not in protected:
                    pids.append(member)
            except psutil.Error:
                continue
        if not pids:
            continue
        if holders is None:
            holders = {}
            try:
                from . import gpu

                for p in gpu.gpu_processes():
                    holders[p.pid] = holders.get(p.pid, 0) + (p.used_bytes or 0)
            except Exception:
                pass
        for member in pids:
            try:
                command = " ".join(psutil.Process(member).cmdline())[:100]
            except psutil.Error:
                command = ""
            found.append(_Stale(member, summary_path.parent, holders.get(member), command))
    return found


def _end_processes(pids: list[int]) -> list[int]:
    """SIGTERM, then SIGKILL; return the PIDs still alive afterwards."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=TERM_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=KILL_WAIT_S)
    return [p.pid for p in alive]


def _handle_stale(runs_root: Path, kill: bool) -> None:
    stale = _find_stale(runs_root)
    if not stale:
        return
    for s in stale:
        mem = (
            f"holds {display.format_bytes(s.gpu_bytes)} of GPU memory" if s.gpu_bytes else "is still running"
        )
        display.note(f"colabkit: pid {s.pid} from the earlier run {s.run_dir.name} {mem}: {s.command}")
    if not kill:
        display.note("colabkit: pass kill_stale=True to run() to end these processes first")
        return
    left = _end_processes([s.pid for s in stale])
    ended = len(stale) - len(left)
    display.note(
        f"colabkit: ended {ended} process(es) left by earlier runs"
        + (f"; still alive: {left}" if left else "")
    )


# -- the run ---------------------------------------------------------------------------------------
def _reader(stream: Any, name: str, q: queue.Queue[tuple[str, str | None]]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = stream.fileno()
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            text = decoder.decode(data)
            if text:
                q.put((name, text))
        rest = decoder.decode(b"", final=True)
        if rest:
            q.put((name, rest))
    except OSError:
        pass
    finally:
        q.put((name, None))


class _Log:
    """output.log: everything the child wrote, each stream's unfinished line held back until it ends.

    Two pipes cannot keep the child's exact interleaving; holding back a stream's text after its
    last newline or carriage return keeps a stdout line from landing inside a stderr progress bar.
    """

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "w", encoding="utf-8", errors="replace", newline="")  # noqa: SIM115 - closed in close()
        self._held: dict[str, str] = {}

    def write(self, text: str, stream: str = "stdout") -> None:
        text = self._held.pop(stream, "") + text
        cut = max(text.rfind("\n"), text.rfind("\r")) + 1
        if len(text) - cut > 65536:  # a very long line without an end: do not hold it forever
            cut = len(text)
        if cut:
            self._fh.write(text[:cut])
        if cut < len(text):
            self._held[stream] = text[cut:]

    def flush(self) -> None:
        self._fh.flush()

    def close(self, trailer: str = "") -> None:
        for held in self._held.values():
            self._fh.write(held)
        self._held.clear()
        if trailer:
            self._fh.write(trailer)
        self._fh.close()


class _Run:
    """One run's live state; the loop runs on the caller's thread."""

    def __init__(self, script: str, args: tuple[str, ...], run_dir: Path, timeout: float | None) -> None:
        self.script = script
        self.args = args
        self.run_dir = run_dir
        self.timeout = timeout
        self.proc: Any = None
        self.pid: int | None = None
        self.seen = ""  # the last few KB of output, for hooks and tests
        self.reason: str | None = None
        self.stderr_lines: collections.deque[str] = collections.deque(maxlen=200)
        self._stderr_partial = ""

    def note_stderr(self, text: str) -> None:
        pieces = (self._stderr_partial + text).split("\n")
        self._stderr_partial = pieces.pop()[-4096:]
        for line in pieces:
            self.stderr_lines.append(line.rsplit("\r", 1)[-1] if line.rstrip("\r") else line)

    def stderr_tail(self) -> tuple[str, ...]:
        lines = list(self.stderr_lines)
        if self._stderr_partial.strip():
            lines.append(self._stderr_partial.rsplit("\r", 1)[-1])
        return tuple(lines)


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
) -> RunResult:
    """Run a Python script as a child process with live output and a GPU memory monitor.

    The script path resolves against ``cwd``, else the open project, else the current folder. Output
    streams live (``\\r`` progress bars stay on one line, floods are throttled) and goes in full to
    ``<project>/<log_dir>/<YYYYmmdd-HHMMSS>-<script>/output.log`` with ``metrics.csv`` and ``summary.json``.

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
        raw: run ``python SCRIPT`` without colabkit's bootstrap (no torch peak report).
        kill_stale: end processes left alive by earlier runs of this project before starting.

    Returns:
        RunResult: exit status, duration, run folder, samples and stats.

    Raises:
        ScriptNotFound: ``script`` does not exist (relative paths resolve against the working folder).
        CudaOutOfMemory: the child crashed out of GPU memory (with ``check=True``).
        RunFailed: the child exited non-zero or hit ``timeout`` (with ``check=True``).
        KeyboardInterrupt: you pressed Stop; the child's process group was ended first.

    Examples:
        >>> r = colabkit.run("train.py", "--epochs", "3")
        >>> r.stats.peak_used_bytes, r.stats.headroom_bytes
        (10523508736, 5579325440)
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
    try:
        from . import session
    except ImportError:
        display.note("colabkit: release=True, but this colabkit has no session module: nothing to release")
        return
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
        "(colabkit.project('NAME')) or pass cwd= or an absolute path.",
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
) -> RunResult:
    if monitor and (not interval or interval < MIN_INTERVAL):
        raise ValueError(f"interval={interval!r} is too short: use at least {MIN_INTERVAL} seconds")
    project = _project_dir()
    base = Path(cwd).resolve() if cwd is not None else (project or Path.cwd())
    workdir = base
    script_path = _resolve_script(script, workdir)
    root = Path(log_dir) if Path(log_dir).is_absolute() else (project or base) / log_dir
    _handle_stale(root, kill_stale)
    run_dir = _new_run_dir(root, script_path.stem)
    log_path = run_dir / "output.log"
    report_path = run_dir / ".framework.json"

    sampler = Sampler(interval=interval, csv_path=run_dir / "metrics.csv") if monitor else None
    if sampler is not None:
        if sampler.gpu_count == 0:
            display.note("colabkit: no NVIDIA GPU visible (NVML found none); monitoring RAM and time only")
        sampler.capture_baseline()

    child_env = dict(os.environ)
    child_env.update({"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"})
    child_env.update({str(k): str(v) for k, v in (env or {}).items()})
    cmd = [python or sys.executable]
    if not raw:
        cmd += ["-m", "colabkit._child"]
        child_env["COLABKIT_CHILD_REPORT"] = str(report_path)
    cmd += [str(script), *args]

    import subprocess

    import psutil

    state = _Run(str(script), args, run_dir, timeout)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "status": "running",
        "script": str(script),
        "args": list(args),
        "started": None,
        "ended": None,
        "duration_s": None,
        "returncode": None,
        "pid": None,
        "pid_create_time": None,
        "boot_id": _boot_id(),
        "hostname": socket.gethostname(),
        "peak_gpu_bytes": None,
        "gpu_total_bytes": None,
        "framework_peak_bytes": None,
        "attribution": None,
        "log": "output.log",
    }
    log = _Log(log_path)
    started_wall = time.time()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=str(workdir),
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        log.close()
        raise ColabkitError(
            f"could not start {cmd[0]!r}: {exc.strerror or exc}",
            "Pass python=None to use this kernel's interpreter, or the full path of an existing one",
        ) from exc
    state.proc = proc
    state.pid = proc.pid
    try:
        create_time = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        create_time = None
    summary.update(started=_iso(started_wall), pid=proc.pid, pid_create_time=create_time)
    _write_json(run_dir / "summary.json", summary)
    if sampler is not None:
        sampler.watch(proc.pid)
        sampler.start()

    q: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(
            target=_reader, args=(proc.stdout, "stdout", q), name="colabkit-reader-stdout", daemon=True
        ),
        threading.Thread(
            target=_reader, args=(proc.stderr, "stderr", q), name="colabkit-reader-stderr", daemon=True
        ),
    ]
    for t in readers:
        t.start()

    view = display.OutputView()
    status = display.StatusLine(view.mode)
    interrupted_by_user = False
    try:
        _pump(state, proc, q, log, view, status, sampler, started)
    except KeyboardInterrupt:  # pragma: no cover - _pump handles it; a second one lands here
        interrupted_by_user = True
    interrupted_by_user = interrupted_by_user or state.reason == "interrupt"
    for t in readers:
        t.join(timeout=KILL_WAIT_S)
    # a reader can only outlive the join if something outside the group holds the pipe
    while True:
        try:
            name, text = q.get_nowait()
        except queue.Empty:
            break
        if text:
            log.write(text, name)
            view.feed(text, name)
            if name == "stderr":
                state.note_stderr(text)
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass
    ended_wall = time.time()
    duration = time.monotonic() - started
    rc = proc.returncode
    stats = sampler.stop() if sampler is not None else None
    if sampler is not None and sampler.error is not None:
        display.note(f"colabkit: the GPU monitor stopped early: {sampler.error!r}")
    samples = sampler.samples if sampler is not None else ()

    framework_peak = framework_reserved = None
    if report_path.exists():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
            devices = report.get("devices") or []
            if devices:
                busiest = max(devices, key=lambda d: d.get("max_memory_allocated") or 0)
                framework_peak = int(busiest["max_memory_allocated"])
                framework_reserved = int(busiest["max_memory_reserved"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        try:
            report_path.unlink()
        except OSError:
            pass

    trailer = ""
    if state.reason is not None:
        run_status = "interrupted"
        why = "timeout" if state.reason == "timeout" else "interrupt"
        trailer = f"\n[colabkit] run interrupted ({why}) after {display.format_duration(duration)}\n"
    else:
        run_status = "finished" if rc == 0 else "failed"
    log.close(trailer)
    tail = state.stderr_tail()
    oom_framework = oom.detect("\n".join(tail)) if run_status == "failed" else None
    result = RunResult(
        returncode=rc,
        status=run_status,
        duration_s=duration,
        log_dir=run_dir,
        log_path=log_path,
        samples=samples,
        stats=stats,
        framework_peak_bytes=framework_peak,
        attribution=stats.attribution if stats else None,
        script=str(script),
        args=args,
        framework_reserved_bytes=framework_reserved,
        stderr_tail=tail[-STDERR_TAIL:],
        oom=oom_framework,
        oom_tried_bytes=oom.tried_bytes("\n".join(tail)) if oom_framework else None,
        reason=state.reason,
        timeout=timeout,
    )
    summary.update(
        status=run_status,
        ended=_iso(ended_wall),
        duration_s=round(duration, 3),
        returncode=rc,
        peak_gpu_bytes=result.peak_gpu_bytes,
        gpu_total_bytes=result.gpu_total_bytes,
        framework_peak_bytes=framework_peak,
        attribution=result.attribution,
    )
    _write_json(run_dir / "summary.json", summary)
    if samples and any(s.used for s in samples):
        try:
            result.plot()
        except ImportError:
            pass
        except Exception as exc:  # a plot must never cost the run's result
            display.note(f"colabkit: could not draw gpu.png: {exc}")
    view.status = ""
    view.render(time.monotonic(), final=True)
    status.close(_status_text(sampler, duration))
    display.note(result.summary())
    if interrupted_by_user:
        raise KeyboardInterrupt
    return result


def _status_text(sampler: Sampler | None, elapsed: float) -> str:
    if sampler is None:
        return display.format_duration(elapsed)
    return display.format_status(sampler.latest, sampler.peak_used(), elapsed)


def _pump(
    state: _Run,
    proc: Any,
    q: queue.Queue[tuple[str, str | None]],
    log: Any,
    view: display.OutputView,
    status: display.StatusLine,
    sampler: Sampler | None,
    started: float,
) -> None:
    """Move output from the queue to the log and the screen until the child and its pipes are done."""
    eof = 0
    last_flush = started
    exited_at: float | None = None
    stopping: str | None = None  # None | "int" | "term" | "kill"
    deadline = 0.0
    pgid = proc.pid
    while True:
        try:
            try:
                item: tuple[str, str | None] | None = q.get(timeout=0.05)
            except queue.Empty:
                item = None
            n = 0
            while item is not None:
                name, text = item
                if text is None:
                    eof += 1
                else:
                    log.write(text, name)
                    view.feed(text, name)
                    state.seen = (state.seen + text)[-4096:]
                    if name == "stderr":
                        state.note_stderr(text)
                n += 1
                if n >= _DRAIN_MAX:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            if _loop_hook is not None:
                _loop_hook(state)
            if now - last_flush >= LOG_FLUSH_S:
                log.flush()
                last_flush = now
            if view.due(now):
                text = _status_text(sampler, now - started)
                view.status = text
                if status.mode != "terminal":
                    status.update(text, now)
                view.render(now)
            if state.timeout is not None and stopping is None and now - started >= state.timeout:
                state.reason = "timeout"
                stopping, deadline = "int", now + INT_GRACE_S
                _signal_group(pgid, signal.SIGINT)
            if proc.poll() is not None and exited_at is None:
                exited_at = now
            if stopping is not None:
                if not _group_members(pgid) and proc.poll() is not None:
                    if eof >= 2 or now - (exited_at or now) >= PIPE_GRACE_S:
                        return
                elif now >= deadline:
                    if stopping == "int":
                        stopping, deadline = "term", now + TERM_GRACE_S
                        _signal_group(pgid, signal.SIGTERM)
                    elif stopping == "term":
                        stopping, deadline = "kill", now + KILL_WAIT_S
                        _signal_group(pgid, signal.SIGKILL)
                    else:
                        display.note(
                            f"colabkit: processes of group {pgid} survive SIGKILL: {_group_members(pgid)}"
                        )
                        return
                continue
            if exited_at is not None:
                leftovers = _group_members(pgid)
                if eof >= 2 and not leftovers:
                    return
                if now - exited_at >= PIPE_GRACE_S and leftovers:
                    # the script is done but left processes behind (workers, a server): end them, they may hold the GPU
                    log.write(
                        f"\n[colabkit] ending {len(leftovers)} leftover process(es) of the run: {leftovers}\n",
                        "colabkit",
                    )
                    stopping, deadline = "term", now + TERM_GRACE_S
                    _signal_group(pgid, signal.SIGTERM)
                elif now - exited_at >= PIPE_GRACE_S + KILL_WAIT_S:
                    return  # the pipes are held outside the group; the readers are daemon threads
        except KeyboardInterrupt:
            now = time.monotonic()
            if stopping is None:
                state.reason = "interrupt"
                stopping, deadline = "int", now + INT_GRACE_S
                _signal_group(pgid, signal.SIGINT)
                display.note("colabkit: interrupted; stopping the run (press Stop again to kill it at once)")
            else:
                stopping, deadline = "kill", now + KILL_WAIT_S
                _signal_group(pgid, signal.SIGKILL)


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


def _cli_run(args: Any) -> int:
    result = run(
        args.script,
        *args.args,
        monitor=not args.no_monitor,
        interval=args.interval,
        log_dir=args.log_dir,
        timeout=args.timeout,
        raw=args.raw,
        kill_stale=args.kill_stale,
        check=False,
    )
    rc = result.returncode
    if rc is None:
        return 1
    return 128 - rc if rc < 0 else rc
