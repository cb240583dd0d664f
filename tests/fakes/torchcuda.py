"""A stand-in for the CUDA caching allocator behind a CPU build of torch: its counters, OOM observers and snapshot.

Only the boundary is replaced: the ``torch._C`` entry points that ``torch.cuda`` calls for memory
(``_cuda_init``, ``_cuda_getDeviceCount``, ``_cuda_getDevice``, ``_cuda_memoryStats``,
``_cuda_resetPeakMemoryStats``, ``_cuda_attach_out_of_memory_observer``, ``_cuda_memorySnapshot``,
``_cuda_record_memory_history``, ``_cuda_emptyCache``) and ``torch.cuda.get_device_properties`` /
``device_count``; ``torch.cuda.is_available()`` stays False, so torch never runs a kernel on it. ``torch.cuda``'s own Python code runs unchanged on top:
``init()`` goes through the real ``torch.cuda._lazy_init`` (queued lazy calls included), and
``torch.cuda.max_memory_allocated()`` through the real ``memory_stats``.

The script allocates "GPU memory" by hand, as tensors would::

    from fakes import torchcuda
    gpu = torchcuda.install(total=15 * torchcuda.GIB)     # after import torch
    block = gpu.alloc(300 * torchcuda.MIB)                # held while `block` lives
    del block                                             # freed, stays reserved (cached)

The allocator keeps the real shapes: allocations are rounded to 512 bytes; requests under 1 MiB come
from 2 MiB "small" segments, larger ones from 20 MiB segments (or their own, rounded to 2 MiB, from
10 MiB up); a freed block stays reserved and is reused (split) by later requests; when nothing fits
and the GPU is full it frees the cached segments, tries again, then calls the OOM observers with
``(device, size, device_used, device_free)`` and raises ``torch.OutOfMemoryError`` with PyTorch's text.
With allocation history on, each block records the Python stack that allocated it, innermost first.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace
from typing import Any

GIB = 1024**3
MIB = 1024**2
KIB = 1024

_SMALL = 1 * MIB  # requests up to this come from the small pool
_SMALL_SEGMENT = 2 * MIB
_LARGE_SEGMENT = 20 * MIB
_MIN_LARGE_ALONE = 10 * MIB
_KINDS = ("allocation", "segment", "active", "inactive_split", "allocated_bytes", "reserved_bytes",
          "active_bytes", "inactive_split_bytes", "requested_bytes")  # fmt: skip
_POOLS = ("all", "small_pool", "large_pool")


def _fmt(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


class _Stat:
    __slots__ = ("current", "peak", "allocated", "freed")

    def __init__(self) -> None:
        self.current = self.peak = self.allocated = self.freed = 0

    def add(self, n: int) -> None:
        self.current += n
        self.allocated += n
        if self.current > self.peak:
            self.peak = self.current

    def sub(self, n: int) -> None:
        self.current -= n
        self.freed += n

    def as_dict(self) -> dict[str, int]:
        return {"current": self.current, "peak": self.peak, "allocated": self.allocated, "freed": self.freed}


class Block:
    """A live allocation: freed when the last reference goes (as a tensor's storage is)."""

    def __init__(self, gpu: FakeCuda, seg: dict[str, Any], index: int, size: int) -> None:
        self.gpu = gpu
        self.seg = seg
        self.entry = seg["blocks"][index]
        self.size = size

    def free(self) -> None:
        if self.gpu is not None:
            gpu, self.gpu = self.gpu, None
            gpu._free(self.seg, self.entry)

    def __del__(self) -> None:
        self.free()


class FakeCuda:
    """One fake GPU (device 0) and its caching allocator."""

    def __init__(self, total: int = 15 * GIB, *, name: str = "Tesla T4", capability: tuple[int, int] = (7, 5),
                 context: int = 300 * MIB) -> None:  # fmt: skip
        self.total = total
        self.name = name
        self.capability = capability
        self.context = context  # what the CUDA context takes: device used, not reserved by torch
        self.segments: list[dict[str, Any]] = []
        self.stats = {k: {p: _Stat() for p in _POOLS} for k in _KINDS}
        self.num_ooms = 0
        self.observers: list[Any] = []
        self.history: str | None = None  # "python" while allocation history is recorded
        self.traces: list[dict[str, Any]] = []
        self.max_entries = 1
        self._next_address = 0x7F0000000000

    # -- torch._C entry points ---------------------------------------------------------------------
    def memory_stats(self, device: int) -> dict[str, Any]:
        self._device(device)
        out: dict[str, Any] = {
            "num_alloc_retries": 0,
            "num_ooms": self.num_ooms,
            "max_split_size": -1,
            "num_sync_all_streams": 0,
            "num_device_alloc": self.stats["segment"]["all"].allocated,
            "num_device_free": self.stats["segment"]["all"].freed,
        }
        for kind, pools in self.stats.items():
            out[kind] = {p: s.as_dict() for p, s in pools.items()}
        out["oversize_allocations"] = {"current": 0, "peak": 0, "allocated": 0, "freed": 0}
        out["oversize_segments"] = {"current": 0, "peak": 0, "allocated": 0, "freed": 0}
        return out

    def reset_peak(self, device: int) -> None:
        self._device(device)
        for pools in self.stats.values():
            for s in pools.values():
                s.peak = s.current

    def attach_observer(self, fn: Any) -> None:
        self.observers.append(fn)

    def record_history(self, enabled: Any, context: Any = "all", stacks: str = "all", max_entries: int = sys.maxsize,
                       *rest: Any) -> None:  # fmt: skip
        self.history = stacks if enabled and context else None
        self.max_entries = max_entries if enabled == "all" else 1

    def snapshot(self, mempool_id: Any = None) -> dict[str, Any]:
        segments = []
        for seg in self.segments:
            blocks = [
                {"address": b["address"], "size": b["size"], "requested_size": b["requested_size"],
                 "state": b["state"], "frames": list(b["frames"])}
                for b in seg["blocks"]
            ]  # fmt: skip
            allocated = sum(b["size"] for b in seg["blocks"] if b["state"] == "active_allocated")
            segments.append({
                "device": 0, "address": seg["address"], "total_size": seg["total_size"],
                "allocated_size": allocated, "active_size": allocated,
                "requested_size": sum(b["requested_size"] for b in seg["blocks"] if b["state"] == "active_allocated"),
                "stream": 0, "segment_type": seg["segment_type"], "segment_pool_id": (0, 0),
                "is_expandable": False, "frames": [], "blocks": blocks,
            })  # fmt: skip
        return {
            "segments": segments,
            "device_traces": [list(self.traces)],
            "allocator_settings": {"PYTORCH_CUDA_ALLOC_CONF": "", "max_split_size": -1,
                                   "garbage_collection_threshold": 0.0, "expandable_segments": False,
                                   "pinned_num_register_threads": 1, "release_lock_on_cudamalloc": False,
                                   "pinned_use_cuda_host_register": False, "roundup_power2_divisions": {}},
            "external_annotations": [],
        }  # fmt: skip

    def empty_cache(self) -> None:
        for seg in list(self.segments):
            if all(b["state"] == "inactive" for b in seg["blocks"]):
                self._release(seg)

    # -- the script's side ---------------------------------------------------------------------------
    @property
    def reserved(self) -> int:
        return self.stats["reserved_bytes"]["all"].current

    @property
    def allocated(self) -> int:
        return self.stats["allocated_bytes"]["all"].current

    def device_used(self) -> int:
        return self.context + self.reserved

    def _alloc(self, nbytes: int) -> Block | int:
        """The block, or the rounded size that did not fit."""
        size = max(512, -(-nbytes // 512) * 512)
        pool = "small_pool" if size <= _SMALL else "large_pool"
        found = self._fit(size, pool)
        if found is None:
            seg_size = _SMALL_SEGMENT if pool == "small_pool" else (
                _LARGE_SEGMENT if size < _MIN_LARGE_ALONE else -(-size // (2 * MIB)) * (2 * MIB))  # fmt: skip
            if self.device_used() + seg_size > self.total:
                self.empty_cache()
            if self.device_used() + seg_size > self.total:
                self._oom_trace(size)
                return size
            found = (self._new_segment(seg_size, pool), 0)
        seg, index = found
        return self._take(seg, index, size, nbytes, pool)

    # -- inside -----------------------------------------------------------------------------------------
    def _device(self, device: Any) -> None:
        if device not in (0, None):
            raise RuntimeError(f"Invalid device argument {device}: did you call init?")

    def _fit(self, size: int, pool: str) -> tuple[dict[str, Any], int] | None:
        best = None
        for seg in self.segments:
            if seg["pool"] != pool:
                continue
            for i, b in enumerate(seg["blocks"]):
                if b["state"] == "inactive" and b["size"] >= size and (best is None or b["size"] < best[2]):
                    best = (seg, i, b["size"])
        return None if best is None else (best[0], best[1])

    def _new_segment(self, seg_size: int, pool: str) -> dict[str, Any]:
        address = self._next_address
        self._next_address += seg_size + 2 * MIB
        seg = {"address": address, "total_size": seg_size, "pool": pool,
               "segment_type": "small" if pool == "small_pool" else "large",
               "blocks": [{"address": address, "size": seg_size, "requested_size": 0, "state": "inactive", "frames": []}]}  # fmt: skip
        self.segments.append(seg)
        for kind, n in (("segment", 1), ("reserved_bytes", seg_size)):
            self.stats[kind]["all"].add(n)
            self.stats[kind][pool].add(n)
        self._trace("segment_alloc", address, seg_size)
        return seg

    def _release(self, seg: dict[str, Any]) -> None:
        self.segments.remove(seg)
        pool = seg["pool"]
        for kind, n in (("segment", 1), ("reserved_bytes", seg["total_size"])):
            self.stats[kind]["all"].sub(n)
            self.stats[kind][pool].sub(n)
        self._trace("segment_free", seg["address"], seg["total_size"])

    def _take(self, seg: dict[str, Any], index: int, size: int, requested: int, pool: str) -> Block:
        b = seg["blocks"][index]
        if b["size"] > size:  # split: the rest stays cached
            rest = {"address": b["address"] + size, "size": b["size"] - size, "requested_size": 0,
                    "state": "inactive", "frames": []}  # fmt: skip
            seg["blocks"].insert(index + 1, rest)
            b["size"] = size
        b["state"] = "active_allocated"
        b["requested_size"] = requested
        b["frames"] = self._frames() if self.history else []
        for kind, n in (("allocation", 1), ("active", 1), ("allocated_bytes", size), ("active_bytes", size),
                        ("requested_bytes", requested)):  # fmt: skip
            self.stats[kind]["all"].add(n)
            self.stats[kind][pool].add(n)
        self._trace("alloc", b["address"], size, b["frames"])
        return Block(self, seg, index, size)

    def _free(self, seg: dict[str, Any], entry: dict[str, Any]) -> None:
        pool = seg["pool"]
        size = entry["size"]
        for kind, n in (("allocation", 1), ("active", 1), ("allocated_bytes", size), ("active_bytes", size),
                        ("requested_bytes", entry["requested_size"])):  # fmt: skip
            self.stats[kind]["all"].sub(n)
            self.stats[kind][pool].sub(n)
        self._trace("free_requested", entry["address"], size, entry["frames"])
        self._trace("free_completed", entry["address"], size, entry["frames"])
        entry.update(state="inactive", requested_size=0, frames=[])
        blocks = seg["blocks"]  # merge free neighbours, as the allocator does
        merged: list[dict[str, Any]] = []
        for b in blocks:
            if merged and b["state"] == "inactive" and merged[-1]["state"] == "inactive":
                merged[-1]["size"] += b["size"]
            else:
                merged.append(b)
        blocks[:] = merged

    def _frames(self) -> list[dict[str, Any]]:
        out = []
        f = sys._getframe(1)
        while f is not None:
            if f.f_code.co_filename not in (__file__, NATIVE):
                out.append({"filename": f.f_code.co_filename, "line": f.f_lineno, "name": f.f_code.co_name})
            f = f.f_back
        return out

    def _trace(self, action: str, address: int, size: int, frames: list[dict[str, Any]] | None = None) -> None:
        if self.history is None or self.max_entries <= 1:
            return
        entry = {"action": action, "addr": address, "size": size, "stream": 0,
                 "time_us": int(time.time() * 1e6), "frames": list(frames or [])}  # fmt: skip
        self.traces = (self.traces + [entry])[-self.max_entries:]

    def _oom_trace(self, size: int) -> None:
        self.num_ooms += 1
        if self.history is not None and self.max_entries > 1:
            self.traces = (self.traces + [{"action": "oom", "device_free": self.total - self.device_used(), "size": size,
                                           "stream": 0, "time_us": int(time.time() * 1e6), "frames": self._frames()}])[-self.max_entries:]  # fmt: skip

    def oom_error(self, size: int) -> Exception:
        import torch

        free = self.total - self.device_used()
        unallocated = self.reserved - self.allocated
        return torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {_fmt(size)}. GPU 0 has a total capacity of {_fmt(self.total)} "
            f"of which {_fmt(free)} is free. Including non-PyTorch memory, this process has {_fmt(self.device_used())} "
            f"memory in use. Of the allocated memory {_fmt(self.allocated)} is allocated by PyTorch, and "
            f"{_fmt(unallocated)} is reserved by PyTorch but unallocated. If reserved but unallocated memory is large "
            "try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation "
            "for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
        )


# The allocator is C++ in torch: no Python frame of it is on the stack an OOM observer or the allocation
# history sees. The fake's entry point is compiled under a name of that kind ("<...>", as for frozen or
# generated code), so the frames the child records are the same as with the real allocator.
NATIVE = "<c10::cuda::CUDACachingAllocator>"
_SOURCE = """
def alloc(gpu, nbytes):
    "Allocate nbytes as a tensor would; raises torch.OutOfMemoryError when it cannot."
    got = gpu._alloc(nbytes)
    if isinstance(got, int):
        for fn in list(gpu.observers):
            fn(0, got, gpu.device_used(), gpu.total - gpu.device_used())
        raise gpu.oom_error(got)
    return got
"""
_scope: dict[str, Any] = {}
exec(compile(_SOURCE, NATIVE, "exec"), _scope)
FakeCuda.alloc = _scope["alloc"]  # type: ignore[attr-defined]


def install(total: int = 15 * GIB, **kw: Any) -> FakeCuda:
    """Put a fake GPU behind ``torch.cuda`` and initialise CUDA through torch's own lazy init."""
    import torch

    # modules that decide at import whether torch was built with CUDA (by the very entry points faked
    # here) must have decided before the fake appears; the first optimizer imports them anyway
    import torch._dynamo  # noqa: F401

    gpu = FakeCuda(total, **kw)
    C = torch._C
    C._cuda_init = lambda: None
    C._cuda_getDeviceCount = lambda: 1
    C._cuda_getDevice = lambda: 0
    C._cuda_memoryStats = gpu.memory_stats
    C._cuda_resetPeakMemoryStats = gpu.reset_peak
    C._cuda_attach_out_of_memory_observer = gpu.attach_observer
    C._cuda_memorySnapshot = gpu.snapshot
    C._cuda_record_memory_history = gpu.record_history
    C._cuda_emptyCache = gpu.empty_cache
    torch.cuda._cudart = SimpleNamespace()
    torch.cuda.device_count = lambda: 1
    torch.cuda.default_generators = (torch.Generator(),)  # torch.manual_seed() also seeds each GPU's generator
    torch.cuda.get_device_properties = lambda device=None: SimpleNamespace(
        name=gpu.name, total_memory=gpu.total, major=gpu.capability[0], minor=gpu.capability[1]
    )
    torch.cuda.init()
    return gpu
