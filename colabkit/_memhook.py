"""Runs inside the training child: GPU memory per optimizer step, and what held the memory at an out-of-memory error.

The bootstrap (``_child``) calls :func:`install` before the script runs. Nothing happens until the script
imports torch: this module never imports it (it waits for the import through a ``sys.meta_path`` finder
that removes itself once torch is loaded). Then it:

- registers a global optimizer-step post hook (``torch.optim.optimizer.register_optimizer_step_post_hook``,
  all optimizers). On each step of the first optimizer that steps (a GAN's second optimizer does not add
  rows) it appends to ``steps.csv``: the step, the time, allocated and reserved bytes now, the peaks since
  the previous step and the least allocated (the floor: what outlives a step). Bounded: the first
  ``FULL_ROWS`` rows hold one step each, each later block of ``FULL_ROWS`` rows twice as many steps as the
  block before (a row then carries the largest peaks and the lowest floor of its steps).
- once CUDA initialises (``torch.cuda._lazy_call``: never earlier, so a CPU script gets no CUDA context),
  keeps colabkit's own running maxima. The allocator's peak counters are reset after each step, and
  ``torch._C._cuda_memoryStats`` / ``_cuda_resetPeakMemoryStats`` (and the ``torch.accelerator`` pair),
  which every ``torch.cuda.max_memory_allocated()``, ``memory_stats()`` and ``reset_peak_memory_stats()``
  goes through, report the largest peak over both: the script reads exactly what it would without colabkit,
  resets included.
- attaches PyTorch's out-of-memory observer, which runs before the error unwinds the stack: it writes
  ``oom.json`` (the failed request, allocated and reserved, the GPU, autocast, the Python stack that asked)
  and ``oom_snapshot.pickle`` (``torch.cuda.memory._snapshot()``, trimmed to ``MAX_SNAPSHOT_BYTES``).
  With ``$COLABKIT_CHILD_HISTORY`` set, allocation history is recorded first, so the snapshot's blocks say
  which source line allocated them.

Under ``torchrun`` every rank runs this; rank 0 writes the files named above, rank N ``steps-rankN.csv``,
``oom-rankN.json`` and ``oom_snapshot-rankN.pickle`` (``$RANK``, as torchrun sets it).

Only the standard library is imported here; ``_child`` runs it (the launcher's ``_memory`` only reads its
variable names and file layout).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
import weakref

TYPE_CHECKING = False  # typing is not imported at run time: the bootstrap stays light
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "COLUMNS",
    "FULL_ROWS",
    "HISTORY_ENTRIES",
    "HISTORY_ENV",
    "MAX_SNAPSHOT_BYTES",
    "OOM_ENV",
    "PROBE_ENV",
    "STEPS_ENV",
    "Watch",
    "install",
]

STEPS_ENV = "COLABKIT_CHILD_STEPS"  # path of steps.csv
OOM_ENV = "COLABKIT_CHILD_OOM"  # folder for oom.json and oom_snapshot.pickle
HISTORY_ENV = "COLABKIT_CHILD_HISTORY"  # "1": record allocation history (stacks of every live block)
PROBE_ENV = "COLABKIT_CHILD_PROBE_STEPS"  # N: end the process (exit 0) after N steps (find_batch's probes)

COLUMNS = (
    "step",
    "t_s",  # seconds since the script started
    "mono_s",  # time.monotonic(), shared by the processes of one machine: the parent aligns it with its samples
    "n",  # steps this row covers
    "device",
    "allocated",  # bytes, now (right after the step)
    "reserved",
    "peak_allocated",  # the most since the previous row
    "peak_reserved",
    "min_allocated",  # the least right after a step, over the row's steps: the floor
)
FULL_ROWS = 2000
FLUSH_S = 0.5
HISTORY_ENTRIES = 20_000  # alloc/free events torch keeps with allocation history on
MAX_SNAPSHOT_BYTES = 16 * 1024**2
MAX_STACK = 40  # frames kept of the stack that asked for the memory
MAX_OOMS = 10  # a script that catches OOMs and retries smaller gets this many recorded


class _Rows:
    """``steps.csv``: one row per step at first, then rows covering 2, 4, 8 ... steps (see the module doc)."""

    def __init__(self, path: str, t0: float) -> None:
        self.path = path
        self.t0 = t0
        self.fh: Any = None
        self.rows = 0
        self.size = 1
        self.count = 0
        self.failed = False
        self._pid = os.getpid()
        self._flushed = 0.0
        self._clear()

    def _clear(self) -> None:
        self.count = 0
        self.device: Any = ""
        self.allocated: Any = ""
        self.reserved: Any = ""
        self.peak_allocated = -1
        self.peak_reserved = -1
        self.min_allocated = -1

    def add(self, step: int, now: float, mem: tuple[int, int, int, int, int] | None) -> None:
        self.count += 1
        if mem is not None:
            self.device, self.allocated, self.reserved, pa, pr = mem
            if pa > self.peak_allocated:
                self.peak_allocated = pa
            if pr > self.peak_reserved:
                self.peak_reserved = pr
            if self.min_allocated < 0 or self.allocated < self.min_allocated:
                self.min_allocated = self.allocated
        if self.count >= self.size:
            self.write(step, now)

    def write(self, step: int, now: float, *, flush: bool = False) -> None:
        if not self.count or self.failed or os.getpid() != self._pid:  # a forked worker writes nothing
            return
        try:
            if self.fh is None:
                self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
                if self.fh.tell() == 0:
                    self.fh.write(",".join(COLUMNS) + "\n")
            known = self.peak_allocated >= 0

            def num(v: int) -> Any:
                return v if known else ""

            self.fh.write(
                f"{step},{now - self.t0:.4f},{now:.4f},{self.count},{self.device},{self.allocated},{self.reserved},"
                f"{num(self.peak_allocated)},{num(self.peak_reserved)},{num(self.min_allocated)}\n"
            )
            self.rows += 1
            if self.rows % FULL_ROWS == 0:
                self.size *= 2
            if flush or now - self._flushed >= FLUSH_S:
                self.fh.flush()
                self._flushed = now
        except (OSError, ValueError):  # the run folder went away: training goes on without rows
            self.failed = True
        self._clear()

    def close(self) -> None:
        if self.fh is not None and os.getpid() == self._pid:
            try:
                self.fh.close()
            except OSError:
                pass
        self.fh = None


def _fold(stats: dict[str, Any], saved: dict[tuple[str, ...], int]) -> None:
    """Remember in ``saved`` every peak in the allocator's nested stats (``{"allocated_bytes": {"all": {"peak": ..}}}``)."""
    for kind, value in stats.items():
        if type(value) is not dict:
            continue
        if "peak" in value:
            p = value["peak"]
            if p > saved.get((kind,), -1):
                saved[(kind,)] = p
            continue
        for pool, s in value.items():
            if type(s) is dict and "peak" in s:
                p = s["peak"]
                if p > saved.get((kind, pool), -1):
                    saved[(kind, pool)] = p


def _merge(stats: dict[str, Any], saved: dict[tuple[str, ...], int]) -> dict[str, Any]:
    """``stats`` with each peak raised to the one colabkit saw before it last reset the counters."""
    for key, p in saved.items():
        s = stats.get(key[0])
        if len(key) == 2 and type(s) is dict:
            s = s.get(key[1])
        if type(s) is dict and s.get("peak", p) < p:
            s["peak"] = p
    return stats


class _Counters:
    """colabkit's running maxima over the caching allocator's peak counters (see the module doc)."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        C = torch._C
        self.C = C
        self._stats = C._cuda_memoryStats
        self._reset = C._cuda_resetPeakMemoryStats
        self.user: dict[int, dict[tuple[str, ...], int]] = {}  # peaks since the script's own last reset
        self.step: dict[int, tuple[int, int]] = {}  # (allocated, reserved) peaks a reset by the script took away
        C._cuda_memoryStats = self.user_stats
        C._cuda_resetPeakMemoryStats = self.user_reset
        self._acc_stats = self._acc_reset = None
        if hasattr(C, "_accelerator_getDeviceStats") and hasattr(C, "_accelerator_resetPeakStats"):
            self._acc_stats, self._acc_reset = C._accelerator_getDeviceStats, C._accelerator_resetPeakStats
            C._accelerator_getDeviceStats = self.user_accelerator_stats
            C._accelerator_resetPeakStats = self.user_reset

    def read(self, device: int) -> tuple[int, int, int, int, int]:
        """Allocated and reserved now, their peaks since the last call; then the counters restart from now."""
        stats = self._stats(device)
        saved = self.user.get(device)
        if saved is None:
            saved = self.user[device] = {}
        _fold(stats, saved)
        a, r = stats["allocated_bytes"]["all"], stats["reserved_bytes"]["all"]
        pa, pr = a["peak"], r["peak"]
        lost = self.step.pop(device, None)
        if lost is not None:
            pa, pr = max(pa, lost[0]), max(pr, lost[1])
        self._reset(device)
        return device, a["current"], r["current"], pa, pr

    def user_stats(self, device: Any) -> dict[str, Any]:
        stats = self._stats(device)
        saved = self.user.get(device)
        return _merge(stats, saved) if saved else stats

    def user_accelerator_stats(self, device: Any) -> Any:
        stats = self._acc_stats(device)  # type: ignore[misc]
        saved = self.user.get(device)
        return _merge(stats, saved) if saved and isinstance(stats, dict) else stats

    def user_reset(self, device: Any) -> Any:
        """The script resets its peaks: colabkit's step peaks keep what it had seen so far."""
        try:
            stats = self._stats(device)
            pa, pr = stats["allocated_bytes"]["all"]["peak"], stats["reserved_bytes"]["all"]["peak"]
            lost = self.step.get(device, (0, 0))
            self.step[device] = (max(lost[0], pa), max(lost[1], pr))
        except Exception:  # pragma: no cover - whatever happens, the script's reset must happen
            pass
        self.user.pop(device, None)
        return self._reset(device)

    def now(self, device: int) -> tuple[int, int]:
        """Allocated and reserved bytes now, without touching any counter."""
        stats = self._stats(device)
        return stats["allocated_bytes"]["all"]["current"], stats["reserved_bytes"]["all"]["current"]


class _TorchFinder:
    """A ``sys.meta_path`` entry that sees ``import torch`` finish, tells the watch, and takes itself out."""

    def __init__(self, on_import: Any) -> None:
        self.on_import = on_import

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Loader(spec.loader, self)
        return spec

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


class _Loader:
    """torch's own loader, for the length of ``import torch``; it puts the original back on the module."""

    def __init__(self, loader: Any, finder: _TorchFinder) -> None:
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._finder.remove()
        try:
            self._loader.exec_module(module)
        finally:
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader
        self._finder.on_import(module)


def _library_paths(torch: Any) -> list[str]:
    """Folders whose files are not the user's code: torch, site-packages, the standard library, colabkit."""
    import site
    import sysconfig

    paths = {os.path.dirname(os.path.abspath(torch.__file__))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(p)
    try:
        paths.update(site.getsitepackages())
        paths.add(site.getusersitepackages())
    except AttributeError:  # pragma: no cover - a virtualenv's old site.py
        pass
    paths.add(os.path.dirname(os.path.abspath(__file__)))
    return sorted(p for p in paths if p)


def _stack(limit: int = MAX_STACK) -> list[dict[str, Any]]:
    """The Python stack here, innermost first, as the snapshot writes frames (``filename``, ``line``, ``name``)."""
    frames = []
    f = sys._getframe(1)
    while f is not None and len(frames) < limit:
        code = f.f_code
        if code.co_filename != __file__:
            frames.append({"filename": code.co_filename, "line": f.f_lineno, "name": code.co_name})
        f = f.f_back
    return frames


def _trim(snapshot: dict[str, Any], limit: int) -> bytes:
    """``snapshot`` pickled in at most ``limit`` bytes: history shortened, then dropped, then stacks of freed blocks."""
    import pickle  # only at an OOM: the bootstrap stays light

    data = pickle.dumps(snapshot, protocol=4)
    if len(data) <= limit:
        return data
    traces = snapshot.get("device_traces") or []
    for keep in (2000, 200):
        snapshot["device_traces"] = [t[-keep:] for t in traces]
        for t in snapshot["device_traces"]:
            for e in t:
                if len(e.get("frames") or ()) > 12:
                    e["frames"] = e["frames"][:12]
        data = pickle.dumps(snapshot, protocol=4)
        if len(data) <= limit:
            return data
    snapshot["device_traces"] = [[] for _ in traces]
    for seg in snapshot.get("segments", ()):
        for b in seg.get("blocks", ()):
            if b.get("state") != "active_allocated":
                b["frames"] = []
            elif len(b.get("frames") or ()) > 12:
                b["frames"] = b["frames"][:12]
    data = pickle.dumps(snapshot, protocol=4)
    if len(data) <= limit:
        return data
    segs = sorted(snapshot.get("segments", ()), key=lambda s: -int(s.get("allocated_size", 0)))
    while segs and len(data) > limit:
        segs = segs[: len(segs) // 2]
        snapshot["segments"] = segs
        data = pickle.dumps(snapshot, protocol=4)
    return data


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class Watch:
    """One training process's memory watch: what :func:`install` set up (tests build one directly)."""

    def __init__(
        self,
        steps_path: str | None = None,
        oom_dir: str | None = None,
        *,
        history: bool = False,
        probe_steps: int | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.clock = clock
        self.t0 = clock()
        rank = os.environ.get("RANK", "")
        self.suffix = f"-rank{rank}" if rank.isdigit() and rank != "0" else ""  # torchrun: one file set per rank
        if steps_path and self.suffix:
            root, ext = os.path.splitext(steps_path)
            steps_path = f"{root}{self.suffix}{ext}"
        self.rows = _Rows(steps_path, self.t0) if steps_path else None
        self.oom_dir = oom_dir
        self.history = history
        self.probe_steps = probe_steps
        self.step = 0
        self.torch: Any = None
        self.counters: _Counters | None = None
        self.cuda_error: str | None = None
        self.history_error: str | None = None
        self.ooms: list[dict[str, Any]] = []
        self._lead: Any = None
        self._finder: _TorchFinder | None = None
        self._closed = False

    # -- waiting for torch ------------------------------------------------------------------------------
    def arm(self) -> None:
        """Act when the script imports torch (at once if it is already imported)."""
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "optim"):
            self.on_torch(torch)
            return
        self._finder = _TorchFinder(self.on_torch)
        sys.meta_path.insert(0, self._finder)

    def disarm(self) -> None:
        if self._finder is not None:
            self._finder.remove()

    def on_torch(self, torch: Any) -> None:
        """torch was imported: register the step hook, and the CUDA part for when CUDA initialises."""
        if self.torch is not None:
            return
        self.torch = torch
        try:
            import importlib

            optimizer = importlib.import_module("torch.optim.optimizer")
            self._hook = optimizer.register_optimizer_step_post_hook(self.on_step)
        except Exception:  # an old torch without the global hook: no per-step rows
            self._hook = None
        try:
            torch.cuda._lazy_call(self.on_cuda)
        except Exception:  # pragma: no cover - a torch without lazy CUDA initialisation
            pass

    def on_cuda(self) -> None:
        """CUDA initialised (torch's lazy init runs this): running maxima, the OOM observer, allocation history.

        Never raises: torch turns an exception here into a failed CUDA initialisation of the script.
        """
        torch = self.torch
        try:
            self.counters = _Counters(torch)
        except Exception as exc:
            self.cuda_error = f"{type(exc).__name__}: {exc}"
        if self.oom_dir:
            try:
                torch._C._cuda_attach_out_of_memory_observer(self.on_oom)
            except Exception as exc:
                self.cuda_error = f"{type(exc).__name__}: {exc}"
        if self.history:
            try:
                torch.cuda.memory._record_memory_history(
                    enabled="all", context="alloc", stacks="python", max_entries=HISTORY_ENTRIES
                )
            except Exception as exc:
                self.history_error = f"{type(exc).__name__}: {exc}"

    # -- each step ---------------------------------------------------------------------------------------
    def on_step(self, optimizer: Any, args: Any = None, kwargs: Any = None) -> None:
        lead = self._lead() if self._lead is not None else None
        if lead is None:
            self._lead = weakref.ref(optimizer)
        elif lead is not optimizer:
            return
        now = self.clock()
        self.step += 1
        mem = None
        counters = self.counters
        if counters is not None:
            try:
                mem = counters.read(self.torch._C._cuda_getDevice())
            except Exception as exc:  # a CUDA error: the script will meet it itself; stop reading
                self.counters = None
                self.cuda_error = f"{type(exc).__name__}: {exc}"
        if self.rows is not None:
            self.rows.add(self.step, now, mem)
        if self.probe_steps is not None and self.step >= self.probe_steps:
            self.close()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(0)  # a probe: the steps it was asked for ran, the batch fits

    def close(self) -> None:
        """Write the last, partial row and close ``steps.csv`` (at exit)."""
        if self._closed:
            return
        self._closed = True
        if self.rows is not None:
            self.rows.write(self.step, self.clock(), flush=True)
            self.rows.close()

    # -- out of memory -------------------------------------------------------------------------------------
    def on_oom(self, device: int, alloc: int, device_allocated: int, device_free: int) -> None:
        """PyTorch's OOM observer: runs in the allocator, before ``OutOfMemoryError`` is raised. Never raises."""
        try:
            self._record_oom(device, alloc, device_allocated, device_free, _stack())
        except BaseException:  # the script's own error is the one to see
            pass

    def _record_oom(
        self, device: int, alloc: int, device_allocated: int, device_free: int, stack: list[dict[str, Any]]
    ) -> None:
        import json

        torch = self.torch
        event: dict[str, Any] = {
            "device": device,
            "requested": alloc,
            "device_used": device_allocated,
            "device_free": device_free,
            "t_s": round(self.clock() - self.t0, 4),
            "step": self.step,
            "stack": stack,
        }
        if self.counters is not None:
            try:
                event["allocated"], event["reserved"] = self.counters.now(device)
            except Exception:
                pass
        if self.rows is not None:  # the rows so far, for the parent to read next to this
            self.rows.write(self.step, self.clock(), flush=True)
        self.ooms = (self.ooms + [event])[-MAX_OOMS:]
        report: dict[str, Any] = {
            "schema": 1,
            "torch": str(getattr(torch, "__version__", "")),
            "history": self.history and self.history_error is None,
            "history_error": self.history_error,
            "library_paths": _library_paths(torch),
            "script_dir": os.path.dirname(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else None,
            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"),
            "events": self.ooms,
            "snapshot": None,
        }
        try:
            props = torch.cuda.get_device_properties(device)
            report["gpu"] = {
                "name": str(props.name),
                "total_memory": int(props.total_memory),
                "capability": [int(props.major), int(props.minor)],
            }
        except Exception:
            report["gpu"] = None
        try:
            on = bool(torch.is_autocast_enabled("cuda"))
            report["autocast"] = str(torch.get_autocast_dtype("cuda")).replace("torch.", "") if on else None
        except Exception:
            report["autocast"] = None
        assert self.oom_dir is not None
        try:
            snapshot = torch.cuda.memory._snapshot()
            data = _trim(snapshot, MAX_SNAPSHOT_BYTES)
            name = f"oom_snapshot{self.suffix}.pickle"
            _write_atomic(os.path.join(self.oom_dir, name), data)
            report["snapshot"] = name
            report["snapshot_bytes"] = len(data)
        except Exception as exc:
            report["snapshot_error"] = f"{type(exc).__name__}: {exc}"
        _write_atomic(os.path.join(self.oom_dir, f"oom{self.suffix}.json"), json.dumps(report).encode())


def install(environ: Any = None) -> Watch | None:
    """Set up the memory watch the run asked for through ``$COLABKIT_CHILD_*`` (the variables are removed).

    Returns:
        The ``Watch``, armed to act when the script imports torch; ``None`` when nothing was asked.
    """
    env = os.environ if environ is None else environ
    steps = env.pop(STEPS_ENV, None) or None
    oom = env.pop(OOM_ENV, None) or None
    history = env.pop(HISTORY_ENV, "") not in ("", "0")
    probe_text = env.pop(PROBE_ENV, "")
    probe = int(probe_text) if probe_text.isdigit() and int(probe_text) > 0 else None
    if steps is None and oom is None and probe is None:
        return None
    watch = Watch(steps, oom, history=history, probe_steps=probe)
    atexit.register(watch.close)
    watch.arm()
    return watch
