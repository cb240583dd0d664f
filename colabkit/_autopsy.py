"""The OOM autopsy: what held the GPU memory when a PyTorch script ran out, in plain words, and the one change that fits.

The child (``_memhook``) records, from PyTorch's out-of-memory observer before the error unwinds the
stack, ``oom.json`` (the request that failed, allocated and reserved bytes, the GPU, autocast, the
Python stack that asked) and ``oom_snapshot.pickle`` (``torch.cuda.memory._snapshot()``: segments of
reserved memory, the blocks in them, and with allocation history the stack that allocated each live
block, innermost frame first). :func:`load` reads both (the pickle with an unpickler that refuses every
class: a snapshot is plain dicts, lists and numbers) and groups the live blocks by the first frame of
the user's own code. :meth:`Autopsy.fix` picks one change from the numbers.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _files, _format
from ._fit import MARGIN, BatchArg
from ._steps import Creep, Step, detect_creep

__all__ = ["OOM_FILE", "SNAPSHOT_FILE", "Autopsy", "Holder", "group_blocks", "load", "read_snapshot"]

OOM_FILE = "oom.json"
SNAPSHOT_FILE = "oom_snapshot.pickle"
MAX_HOLDERS = 5
_LIVE = ("active_allocated", "active_pending_free", "active_awaiting_free")
FRAGMENTED = 0.10  # reserved-but-unallocated above this share of the GPU, more than the request: fragmentation
GIB = 1024**3


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a memory snapshot holds no objects, found {module}.{name}")


def read_snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``torch.cuda.memory._snapshot()`` pickle, without torch and without running any class from it.

    Raises:
        OSError: it cannot be read. pickle.UnpicklingError, ValueError: it is not a plain snapshot.
    """
    data = Path(path).read_bytes()
    snapshot = _PlainUnpickler(io.BytesIO(data)).load()
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("segments"), list):
        raise ValueError("not a memory snapshot: no segments")
    return snapshot


@dataclass(frozen=True)
class Holder:
    """Live blocks allocated from one line: ``where`` is the user's own line (``train.py:42 in forward``)."""

    where: str
    bytes: int
    blocks: int
    via: str | None = None  # the innermost frame outside torch, when it is a library's and not the user's


def _is_library(filename: str, library: tuple[str, ...]) -> bool:
    if not filename or filename.startswith("<"):  # <frozen runpy>, <string>, <eval>
        return True
    return any(filename == p or filename.startswith(p.rstrip("/") + "/") for p in library)


def _frame_text(frame: dict[str, Any], script_dir: str | None) -> str:
    name = str(frame.get("filename", "?"))
    if script_dir and name.startswith(script_dir.rstrip("/") + "/"):
        name = name[len(script_dir.rstrip("/")) + 1 :]
    elif os.path.isabs(name):
        name = os.path.basename(name)
    return f"{name}:{frame.get('line', '?')} in {frame.get('name', '?')}"


def _user_frame(frames: list[dict[str, Any]], library: tuple[str, ...]) -> dict[str, Any] | None:
    return next((f for f in frames if not _is_library(str(f.get("filename", "")), library)), None)


def group_blocks(
    snapshot: dict[str, Any], library: tuple[str, ...] = (), script_dir: str | None = None, *, torch_dir: str | None = None
) -> list[Holder]:
    """The live blocks of ``snapshot`` grouped by the user's line that allocated them, largest first.

    Blocks without frames (allocation history was off) are one group, ``where="(no stack recorded)"``.
    """
    groups: dict[str, list[int]] = {}
    vias: dict[str, str | None] = {}
    for seg in snapshot.get("segments") or ():
        for block in seg.get("blocks") or ():
            if block.get("state") not in _LIVE:
                continue
            frames = list(block.get("frames") or ())
            user = _user_frame(frames, library)
            where = _frame_text(user, script_dir) if user else "(no stack recorded)" if not frames else "(inside libraries)"
            via = None
            if frames and torch_dir is not None:
                outside = next((f for f in frames if not _is_library(str(f.get("filename", "")), (torch_dir,))), None)
                if outside is not None and outside is not user:
                    via = _frame_text(outside, script_dir)
            g = groups.setdefault(where, [0, 0])
            g[0] += int(block.get("size", 0))
            g[1] += 1
            vias.setdefault(where, via)
    holders = [Holder(w, b, n, vias.get(w)) for w, (b, n) in groups.items()]
    return sorted(holders, key=lambda h: -h.bytes)


def _largest_free(snapshot: dict[str, Any]) -> int:
    return max(
        (int(b.get("size", 0)) for s in snapshot.get("segments") or () for b in s.get("blocks") or ()
         if b.get("state") == "inactive"),
        default=0,
    )  # fmt: skip


@dataclass(frozen=True)
class Autopsy:
    """What held the GPU memory at an out-of-memory error, and the one change that fits the numbers (bytes)."""

    requested: int
    allocated: int | None
    reserved: int | None
    total: int | None
    device_free: int | None
    gpu: str | None = None
    capability: tuple[int, int] | None = None
    autocast: str | None = None  # "float16", "bfloat16", or None (no autocast at the failure)
    failed_at: str | None = None  # the user's line that asked for the memory
    step: int = 0  # optimizer steps done before the failure
    holders: tuple[Holder, ...] = ()
    largest_free: int | None = None  # the largest cached block: a request above it needs a new segment
    history: bool = False  # allocation history was on: holders carry source lines
    expandable: bool = False  # PYTORCH_CUDA_ALLOC_CONF already has expandable_segments:True
    floor_first: int | None = None  # allocated right after the first step (steps.csv)
    floor_last: int | None = None
    step_peak: int | None = None  # the highest per-step peak before the failure
    creep: Creep | None = None
    batch: BatchArg | None = None
    snapshot_path: Path | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def unallocated(self) -> int | None:
        """Reserved by PyTorch but not allocated: the allocator's cache."""
        if self.reserved is None or self.allocated is None:
            return None
        return max(0, self.reserved - self.allocated)

    @property
    def needed(self) -> int | None:
        """At least this much was needed at once: allocated at the failure plus the request."""
        return None if self.allocated is None else self.allocated + self.requested

    # -- the one fix ---------------------------------------------------------------------------------
    def fix(self) -> tuple[str, str]:
        """``(kind, instruction)``: ``kind`` is ``kept_tensor``, ``expandable_segments``, ``model``, ``batch``,
        ``fp16``, ``bf16_on_t4`` or ``checkpointing``; the instruction carries the numbers behind it."""
        fb = _format.format_bytes
        total = self.total
        room = int(total * (1 - MARGIN)) if total else None
        grew = (
            self.floor_first is not None and self.floor_last is not None and total
            and self.floor_last - self.floor_first >= 0.25 * total
        )  # fmt: skip
        if self.creep is not None or grew:
            top = f" {self.holders[0].where} holds {fb(self.holders[0].bytes)}." if self.history and self.holders else ""
            rate = f" (≈{fb(self.creep.rate_per_step)}/step)" if self.creep is not None else ""
            return "kept_tensor", (
                f"A tensor is kept across steps: what stays allocated after each step grew from {fb(self.floor_first)} "
                f"to {fb(self.floor_last)} over {self.step:,} steps{rate}.{top} Keep numbers, not tensors, between "
                "steps: `losses.append(loss.item())` instead of `losses.append(loss)`, and `.detach()` anything you keep."
            )
        unalloc = self.unallocated
        if (
            not self.expandable and unalloc is not None and total
            and unalloc >= self.requested and unalloc >= FRAGMENTED * total
        ):  # fmt: skip
            return "expandable_segments", (
                f"Memory is fragmented: {fb(unalloc)} is reserved by PyTorch but unallocated, in pieces smaller than the "
                f"{fb(self.requested)} asked for (the largest is {fb(self.largest_free)}). Run with "
                "env={'PYTORCH_CUDA_ALLOC_CONF': 'expandable_segments:True'}."
            )
        fixed = self.floor_last if self.step else None
        if fixed is not None and room and fixed >= room:
            return "model", (
                f"The model alone does not fit: {fb(fixed)} stays allocated between steps (weights, gradients, optimizer "
                f"state) of the {fb(total)} GPU, whatever the batch. Use a smaller model, an optimizer with less state "
                "(SGD instead of Adam), or load the weights in float16."
            )
        need = max(v for v in (self.needed, self.step_peak) if v is not None) if self.needed is not None else None
        if self.batch is not None and self.batch.value >= 2 and need is not None and room:
            b = self.batch.value
            grows = need - (fixed or 0)
            new = b // 2
            while new > 1 and (fixed or 0) + grows * new / b > room:
                new //= 2
            new = max(1, new)
            at = (fixed or 0) + grows * new / b
            basis = (
                f"of which {fb(fixed)} stays between steps, so {self.batch.spelled(new)} needs ≈{fb(at)}"
                if fixed is not None
                else f"so {self.batch.spelled(new)} needs about {new}/{b} of the part that grows with the batch"
            )
            verb = "halve" if new == b // 2 else "lower"
            return "batch", (
                f"{verb.capitalize()} the batch: {self.batch.spelled()} → {self.batch.spelled(new)} (and multiply gradient "
                f"accumulation by {b // new} to keep the effective batch). The step needed at least {fb(need)} of "
                f"{fb(total)}, {basis}."
            )
        old_gpu = self.capability is not None and self.capability < (8, 0)
        if self.autocast == "bfloat16" and old_gpu:
            return "bf16_on_t4", (
                f"Use float16 autocast instead of bfloat16: the {self.gpu or 'GPU'} (sm_{self.capability[0]}{self.capability[1]}) "
                "has no native bfloat16. torch.autocast('cuda', dtype=torch.float16) with a torch.amp.GradScaler."
            )  # type: ignore[index]
        if self.autocast is None:
            dtype = "torch.float16" if old_gpu or self.capability is None else "torch.bfloat16"
            scaler = " with a torch.amp.GradScaler" if dtype == "torch.float16" else ""
            return "fp16", (
                f"Train in mixed precision: wrap the forward pass and loss in torch.autocast('cuda', dtype={dtype}){scaler}; "
                f"activations then take about half the memory ({fb(need)} were needed at least, of {fb(total)})."
            )
        return "checkpointing", (
            "Use activation checkpointing: torch.utils.checkpoint.checkpoint around the model's blocks (Hugging Face: "
            "model.gradient_checkpointing_enable()) keeps only each block's input and recomputes the rest in backward."
        )

    # -- in words ----------------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        """The autopsy in plain words, a few lines."""
        fb = _format.format_bytes
        at = f" at {self.failed_at}" if self.failed_at else ""
        when = f"after {self.step:,} optimizer steps" if self.step else "before the first optimizer step finished"
        out = [f"asked for {fb(self.requested)} more{at}, {when}"]
        if self.allocated is not None:
            gpu = f" of the {self.gpu} ({fb(self.total)})" if self.gpu else f" of {fb(self.total)}"
            out.append(
                f"PyTorch had {fb(self.allocated)} allocated and {fb(self.reserved)} reserved{gpu}; "
                f"{fb(self.device_free)} was free on the device"
            )
        if self.history and self.holders:
            out.append("what held it, by the line of your code that allocated it:")
            for h in self.holders[:MAX_HOLDERS]:
                via = f" (via {h.via})" if h.via else ""
                out.append(f"  {fb(h.bytes):>10}  {h.where}{via}  [{h.blocks} block{'s' if h.blocks != 1 else ''}]")
        elif self.holders:
            blocks = sum(h.blocks for h in self.holders)
            out.append(f"{blocks} live blocks (no source lines: allocation history was off)")
        out.extend(self.notes)
        return out

    def describe(self) -> str:
        return "\n".join(self.lines())

    def history_hint(self) -> str | None:
        """What to do to see the lines of code, when allocation history was off."""
        if self.history:
            return None
        return "run again with memory_history=True to see which lines of your script held the memory"

    def to_json(self) -> dict[str, object]:
        kind, _ = self.fix()
        return {
            "oom_requested_bytes": self.requested,
            "oom_allocated_bytes": self.allocated,
            "oom_reserved_bytes": self.reserved,
            "oom_fix": kind,
            "oom_failed_at": self.failed_at,
            "oom_top_holder": self.holders[0].where if self.history and self.holders else None,
        }


def load(
    run_dir: str | os.PathLike[str],
    *,
    rows: list[Step] | None = None,
    creep: Creep | None = None,
    batch: BatchArg | None = None,
) -> Autopsy | None:
    """The autopsy of the last OOM recorded in ``run_dir`` (``None`` when the child recorded none).

    Args:
        run_dir: the run folder holding ``oom.json`` and ``oom_snapshot.pickle`` (or a rank's ``oom-rankN.json``).
        rows: the run's ``steps.csv`` rows (floors and peaks before the failure).
        creep: the creep seen during the run; ``None``: looked for in ``rows``.
        batch: the batch size in the script's arguments.
    """
    folder = Path(run_dir)
    path = folder / OOM_FILE
    if not path.exists():  # under torchrun, a rank other than 0 may be the one that ran out
        ranks = sorted(folder.glob("oom-rank*.json"), key=lambda p: p.stat().st_mtime)
        path = ranks[-1] if ranks else path
    report = _files.read_json(path)
    if not isinstance(report, dict) or not report.get("events"):
        return None
    event = report["events"][-1]
    library = tuple(str(p) for p in report.get("library_paths") or ())
    script_dir = report.get("script_dir")
    torch_dir = next((p for p in library if p.rstrip("/").endswith("/torch")), None)
    stack = list(event.get("stack") or ())
    user = _user_frame(stack, library)
    holders: list[Holder] = []
    largest_free = None
    notes: list[str] = []
    snapshot_path = None
    if report.get("snapshot"):
        snapshot_path = folder / str(report["snapshot"])
        try:
            snapshot = read_snapshot(snapshot_path)
            holders = group_blocks(snapshot, library, script_dir, torch_dir=torch_dir)
            largest_free = _largest_free(snapshot)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            notes.append(f"(the memory snapshot could not be read: {exc})")
            snapshot_path = None
    gpu = report.get("gpu") or {}
    cap = gpu.get("capability")
    rows = rows or []
    floors = [r.min_allocated for r in rows if r.min_allocated is not None]
    peaks = [r.peak_allocated for r in rows if r.peak_allocated is not None]
    conf = str(report.get("alloc_conf") or "")
    total = gpu.get("total_memory") or (
        event["device_used"] + event["device_free"] if event.get("device_used") is not None else None)  # fmt: skip
    if creep is None and rows:
        creep = detect_creep(rows, total)
    return Autopsy(
        requested=int(event.get("requested") or 0),
        allocated=event.get("allocated"),
        reserved=event.get("reserved"),
        total=total,
        device_free=event.get("device_free"),
        gpu=gpu.get("name"),
        capability=(int(cap[0]), int(cap[1])) if isinstance(cap, list) and len(cap) == 2 else None,
        autocast=report.get("autocast"),
        failed_at=_frame_text(user, script_dir) if user else None,
        step=int(event.get("step") or 0),
        holders=tuple(holders),
        largest_free=largest_free,
        history=bool(report.get("history")),
        expandable="expandable_segments:true" in conf.replace(" ", "").lower(),
        floor_first=floors[0] if floors else None,
        floor_last=floors[-1] if floors else None,
        step_peak=max(peaks) if peaks else None,
        creep=creep,
        batch=batch,
        snapshot_path=snapshot_path,
        notes=tuple(notes),
    )
