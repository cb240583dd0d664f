"""Several processes for one run through ``torchrun``: how many ranks, the command that starts them, and whose
output is whose.

``run(..., gpus=N)`` (``"all"``: every visible GPU) or ``nproc=N`` (ranks with or without GPUs) starts
``python -m torch.distributed.run --standalone --nproc_per_node=N`` with the user's own interpreter and
torch. Each rank runs through colabkit's bootstrap (``-m colabkit._child``) unless ``raw``. torchrun is
told to tee every rank's output to the console with a ``[rankN]:`` mark on each line
(``$TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE``; torch before 2.2 marks ``[defaultN]:``), so one stream still
carries everything in order and :class:`RankOutput` can keep each rank's last lines (the bootstrap joins a
rank's stderr to its stdout, so torchrun copies one stream per rank, in the order the rank wrote it, and a
secret written in two parts is masked whole by that rank's masker). torchrun ends the
other ranks when one fails and prints which failed first ("Root Cause"); :func:`RankOutput.failure`
reads that. Its tee needs a log folder: a private one (mode 0700) outside the run folder, since a rank
may print a secret that only the masked stream may show; :func:`log_dir` makes it and
:func:`remove_log_dir` removes it (also the ones of runs whose launcher died).

torchrun starts each rank in a session of its own (``start_new_session=True``): a rank is not in the
run's process group, so the run ends its ranks as descendants, not by the group alone.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import _procs, _secrets
from .errors import NoGpuError, NotEnoughGpus

__all__ = [
    "LOG_DIR_PREFIX",
    "PREFIX_TEMPLATE",
    "RankFailure",
    "RankMasker",
    "RankOutput",
    "RankPeaks",
    "RankPlan",
    "RankStats",
    "check_counts",
    "command",
    "environment",
    "log_dir",
    "plan",
    "rank_of",
    "remove_log_dir",
    "sweep_log_dirs",
    "torch_missing",
]

PREFIX_TEMPLATE = "[rank${rank}]:"  # torchrun's mark on each line of a rank (global rank; one node)
LOG_DIR_PREFIX = "colabkit-ranks-"
BACKEND_ENV = "COLABKIT_DIST_BACKEND"  # "nccl" with a GPU per rank, else "gloo": a hint for init_process_group
_MARK = re.compile(r"^\[(?:rank|default)(\d+)\]:", re.MULTILINE)
_TAIL = 200  # lines kept per rank


@dataclass(frozen=True)
class RankPlan:
    """How a run is split: ``nproc`` ranks, ``gpus`` of them with a GPU each (0: CPU ranks), ``backend``."""

    nproc: int
    gpus: int = 0
    backend: str = "gloo"

    def describe(self) -> str:
        """``2 ranks, one GPU each (nccl)`` or ``2 CPU ranks (gloo)``."""
        if self.gpus:
            return f"{self.nproc} rank{'s' if self.nproc != 1 else ''}, one GPU each ({self.backend})"
        return f"{self.nproc} CPU rank{'s' if self.nproc != 1 else ''} ({self.backend})"


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: pass a number of processes of at least 1" + (
            ", or 'all'" if name == "gpus" else ""))
    return value


def check_counts(gpus: object, nproc: object) -> None:
    """What ``plan`` checks without knowing the machine: counts of at least 1 (or ``"all"``) that agree.

    Raises:
        ValueError: a count that is not one, or ``gpus`` and ``nproc`` that disagree.
    """
    if gpus is not None and gpus != "all":
        _count(gpus, "gpus")
    if nproc is not None:
        _count(nproc, "nproc")
    if isinstance(gpus, int) and nproc is not None and gpus != nproc:
        raise ValueError(
            f"gpus={gpus!r} and nproc={nproc!r} disagree: a GPU run has one rank per GPU, so pass one of them"
        )


def plan(gpus: int | str | None, nproc: int | None, *, visible: int, kind: str = "terminal", tpu: bool = False) -> RankPlan | None:
    """The ranks ``run(gpus=, nproc=)`` asks for on a machine that shows ``visible`` GPUs; ``None``: one process.

    Raises:
        NotEnoughGpus: ``gpus=N`` with fewer than N visible GPUs (the fix names Kaggle's GPU T4 x2).
        NoGpuError: ``gpus="all"`` on a machine without a GPU.
        ValueError: a count below 1, or ``gpus`` and ``nproc`` that disagree.
    """
    if gpus is None and nproc is None:
        return None
    if gpus is None:
        n = _count(nproc, "nproc")
        return RankPlan(n, 0, "gloo")
    if gpus == "all":
        if visible == 0:
            raise NoGpuError.for_runtime("gpus='all', and NVML sees no GPU", kind, tpu=tpu)
        wanted = visible
    else:
        wanted = _count(gpus, "gpus")
        if wanted > visible:
            raise NotEnoughGpus.asked(wanted, visible, kind)
    if nproc is not None and _count(nproc, "nproc") != wanted:
        raise ValueError(
            f"gpus={gpus!r} and nproc={nproc!r} disagree: a GPU run has one rank per GPU, so pass one of them"
        )
    return RankPlan(wanted, wanted, "nccl")


def visible_gpus(nvml_count: int, environ: dict[str, str] | None = None) -> int:
    """GPUs a CUDA program here can use: NVML's count, narrowed by ``$CUDA_VISIBLE_DEVICES`` when it is set."""
    env = os.environ if environ is None else environ
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return nvml_count
    names = [part.strip() for part in listed.split(",") if part.strip()]
    kept = []
    for name in names:
        if name.startswith("-"):  # CUDA stops at the first invalid entry
            break
        kept.append(name)
    return min(nvml_count, len(kept))


def command(
    rank_plan: RankPlan, python: str, script: str, args: tuple[str, ...], *, logs: Path, bootstrap: bool = True
) -> list[str]:
    """The torchrun command line: the user's interpreter, its torch, ``nproc`` ranks on this machine.

    No secret is ever part of it: secrets travel in the environment.
    """
    cmd = [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={rank_plan.nproc}",
        "--tee",
        "3",
        "--log-dir",
        str(logs),
    ]
    if bootstrap:
        cmd += ["-m", "colabkit._child"]
    return [*cmd, script, *args]


def environment(rank_plan: RankPlan) -> dict[str, str]:
    """What the ranks' environment gets on top of the run's: the line marks and the backend hint."""
    return {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": PREFIX_TEMPLATE, BACKEND_ENV: rank_plan.backend}


def torch_missing(python: str | None = None) -> str | None:
    """Why torchrun cannot start with ``python`` (no torch there), or ``None`` when it can."""
    exe = python or sys.executable
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return f"PyTorch is not installed in {exe}"
        return None
    try:
        proc = subprocess.run(
            [exe, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch.distributed.run') is None)"],
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{exe} could not be asked about PyTorch: {exc}"
    return None if proc.returncode == 0 else f"PyTorch is not installed in {exe}"


def log_dir(launcher: int | None = None) -> Path:
    """A new private folder (0700) for torchrun's per-rank logs, named after the launching process."""
    pid = os.getpid() if launcher is None else launcher
    return Path(tempfile.mkdtemp(prefix=f"{LOG_DIR_PREFIX}{pid}-"))


def remove_log_dir(path: Path | None) -> None:
    """Remove torchrun's log folder of a run (it may hold what a rank printed, unmasked)."""
    if path is not None and path.name.startswith(LOG_DIR_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def sweep_log_dirs(root: Path | None = None) -> list[Path]:
    """Remove the log folders of runs whose launcher is gone; returns those removed."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(LOG_DIR_PREFIX) or not entry.is_dir():
            continue
        owner = entry.name[len(LOG_DIR_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _procs.alive(int(owner)):
            remove_log_dir(entry)
            removed.append(entry)
    return removed


@dataclass(frozen=True)
class RankFailure:
    """The rank torchrun saw fail first: ``rank``, its ``exitcode`` (negative: the signal), and ``pid``."""

    rank: int
    exitcode: int | None
    pid: int | None = None


_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:={10,}|\Z)", re.S)
_FIELD = {
    "rank": re.compile(r"^\s*rank\s*:\s*(\d+)", re.M),
    "exitcode": re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.M),
    "pid": re.compile(r"\(pid:\s*(\d+)\)"),
}
_FAILED_LINE = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")


class RankOutput:
    """Whose line is whose in a torchrun run's merged output: each rank's last lines, and torchrun's own.

    :meth:`feed` takes the stream as it comes (any cut); a line marked ``[rankN]:`` is rank N's (kept
    without the mark), any other line the launcher's.
    """

    def __init__(self, nproc: int, lines: int = _TAIL) -> None:
        self.nproc = nproc
        self._ranks: dict[int, collections.deque[str]] = {}
        self._launcher: collections.deque[str] = collections.deque(maxlen=lines * 2)
        self._lines = lines
        self._partial = ""

    def feed(self, text: str) -> None:
        pieces = (self._partial + text).split("\n")
        self._partial = pieces.pop()[-65536:]
        for line in pieces:
            self._take(line)

    def _take(self, line: str) -> None:
        mark = _MARK.match(line)
        rest = line[mark.end() :] if mark is not None else line
        rest = rest.rstrip("\r").rsplit("\r", 1)[-1]  # a progress bar's last state
        if mark is None:
            self._launcher.append(rest)
            return
        self._ranks.setdefault(int(mark.group(1)), collections.deque(maxlen=self._lines)).append(rest)

    def finish(self) -> None:
        """The stream ended: its unfinished last line counts too."""
        if self._partial:
            self._take(self._partial)
            self._partial = ""

    def tail(self, rank: int, n: int = 20) -> tuple[str, ...]:
        """The last ``n`` lines rank ``rank`` wrote."""
        return tuple(self._ranks.get(rank, ()))[-n:]

    @property
    def ranks_seen(self) -> tuple[int, ...]:
        return tuple(sorted(self._ranks))

    def failure(self) -> RankFailure | None:
        """The rank that failed first, from torchrun's summary ("Root Cause"), else its "failed" log line."""
        text = "\n".join(self._launcher)
        block = _ROOT_CAUSE.search(text)
        if block is not None:
            fields = {k: rx.search(block.group(1)) for k, rx in _FIELD.items()}
            if fields["rank"] is not None:
                code = fields["exitcode"]
                pid = fields["pid"]
                return RankFailure(
                    int(fields["rank"].group(1)),
                    int(code.group(1)) if code else None,
                    int(pid.group(1)) if pid else None,
                )
        lines = _FAILED_LINE.findall(text)
        if lines:
            code, local, pid = lines[0]
            return RankFailure(int(local), int(code), int(pid))
        return None


# -- each rank's peaks ---------------------------------------------------------------------------------


def rank_of(pid: int) -> int | None:
    """The ``RANK`` torchrun gave ``pid`` (its workers inherit it), from ``/proc/<pid>/environ``; ``None`` if none."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"RANK="):
            value = entry[5:]
            return int(value) if value.isdigit() else None
    return None


@dataclass(frozen=True)
class RankStats:
    """One rank's peaks over the run: host memory of the rank and its workers (PSS where readable), GPU memory
    NVML lists for their pids (``None`` when it listed none), in bytes; ``pid`` of the rank's process."""

    rank: int
    pid: int | None
    peak_memory_bytes: int | None
    peak_gpu_bytes: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {
            "rank": self.rank,
            "pid": self.pid,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_gpu_bytes": self.peak_gpu_bytes,
        }


class RankPeaks:
    """Each rank's peak memory, from the run's processes at each sample (the sampler's thread calls :meth:`add`).

    A process belongs to the rank in its ``RANK`` variable, read once per pid; torchrun itself has none.
    """

    def __init__(self) -> None:
        self._rank: dict[int, int | None] = {}  # pid -> rank, read once
        self._leader: dict[int, int] = {}  # rank -> the pid seen first with it (the rank's own process)
        self._memory: dict[int, int] = {}
        self._gpu: dict[int, int] = {}

    def add(self, pids: set[int], gpu_by_pid: dict[int, int | None] | None = None) -> None:
        """One sample: ``pids`` of the run now, ``gpu_by_pid`` the bytes NVML lists for them (when it does)."""
        memory: dict[int, int] = {}
        gpu: dict[int, int] = {}
        for pid in sorted(pids):
            if pid not in self._rank:
                self._rank[pid] = rank_of(pid)
            rank = self._rank[pid]
            if rank is None:
                continue
            self._leader.setdefault(rank, pid)
            used = _procs.used_memory(pid)
            if used is not None:
                memory[rank] = memory.get(rank, 0) + used[0]
            held = (gpu_by_pid or {}).get(pid)
            if held is not None:
                gpu[rank] = gpu.get(rank, 0) + held
        for rank, total in memory.items():
            self._memory[rank] = max(total, self._memory.get(rank, 0))
        for rank, total in gpu.items():
            self._gpu[rank] = max(total, self._gpu.get(rank, 0))

    def stats(self) -> tuple[RankStats, ...]:
        ranks = sorted(set(self._memory) | set(self._gpu) | set(self._leader))
        return tuple(
            RankStats(rank, self._leader.get(rank), self._memory.get(rank), self._gpu.get(rank)) for rank in ranks
        )


# -- secrets in a torchrun run's output --------------------------------------------------------------------

_MARK_BYTES = re.compile(rb"\[(?:rank|default)(\d+)\]:")
_PARTIAL_MARK = re.compile(rb"\[(?:r(?:a(?:n(?:k\d*(?:\])?)?)?)?|d(?:e(?:f(?:a(?:u(?:l(?:t\d*(?:\])?)?)?)?)?)?)?)?")


def _partial_mark_at(data: bytes) -> int:
    """Where an unfinished ``[rankN]:`` mark begins at the end of ``data`` (``len(data)`` when none does)."""
    for i in range(max(0, len(data) - 16), len(data)):
        if data[i] == 0x5B and _PARTIAL_MARK.fullmatch(data, i):  # "["
            return i
    return len(data)


class RankMasker:
    """Masks secret values in a torchrun run's merged output, each rank's stream apart.

    torchrun's tee marks every piece it copies (``[rankN]:``), also a line a rank wrote in two parts, so one
    rank's value can arrive split by another rank's output: each rank (and torchrun's own lines) gets a
    ``_secrets.Masker`` of its own, fed with what follows that rank's marks. Bytes in, bytes out.
    """

    def __init__(self, values: list[str] | tuple[str, ...]) -> None:
        self._values = tuple(values)
        self._streams: dict[int, _secrets.Masker] = {}
        self._current = -1  # torchrun's own output until a rank's mark
        self._pending = b""  # an end of the stream that may be the start of a mark

    def _masker(self, key: int) -> _secrets.Masker:
        if key not in self._streams:
            self._streams[key] = _secrets.Masker(self._values, binary=True)
        return self._streams[key]

    def __bool__(self) -> bool:
        return any(self._values)

    def feed(self, data: bytes) -> bytes:
        data = self._pending + data
        cut = _partial_mark_at(data)
        data, self._pending = data[:cut], data[cut:]
        out, pos = [], 0
        for mark in _MARK_BYTES.finditer(data):
            out.append(self._masker(self._current).feed(data[pos : mark.start()]))
            out.append(mark.group(0))
            self._current = int(mark.group(1))
            pos = mark.end()
        out.append(self._masker(self._current).feed(data[pos:]))
        return b"".join(out)

    def flush(self) -> bytes:
        """The end of the stream: what each stream still held (no whole value), behind its own mark."""
        out = [self._masker(self._current).feed(self._pending)]
        self._pending = b""
        for key, masker in sorted(self._streams.items()):
            held = masker.flush()
            if held:
                out.append((b"" if key < 0 else b"[rank%d]:" % key) + held)
        return b"".join(out)

