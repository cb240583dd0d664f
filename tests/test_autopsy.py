"""colabkit._autopsy: an OOM's record read back, live blocks grouped by the user's own line, and the one fix.

The snapshots are built in the shape ``torch.cuda.memory._snapshot()`` returns (torch/csrc/cuda/Module.cpp,
``THCPModule_memorySnapshot``): segments with their blocks, block states ``active_allocated`` /
``active_pending_free`` / ``inactive``, frames as ``{"filename", "line", "name"}`` innermost first (with
``stacks="python"``), ``device_traces``, ``allocator_settings`` and ``external_annotations``; pickled as
``torch.cuda.memory._dump_snapshot`` does (``pickle.dump`` of that dict).
"""

from __future__ import annotations

import json
import pickle

import pytest

from colabkit import _autopsy, _fit
from colabkit._steps import Step

MIB = 1024**2
GIB = 1024**3
TORCH = "/usr/local/lib/python3.12/dist-packages/torch"
LIBS = [
    "/usr/lib/python3.12",
    "/usr/local/lib/python3.12/dist-packages",
    "/usr/local/lib/python3.12/dist-packages/colabkit",
    TORCH,
]
PROJECT = "/content/drive/MyDrive/test"


def frame(filename, line, name):
    return {"filename": filename, "line": line, "name": name}


def linear_in(model_line):
    """The stack of an allocation in a Linear layer called from the user's model.py, innermost first."""
    return [
        frame(f"{TORCH}/nn/modules/linear.py", 125, "forward"),
        frame(f"{TORCH}/nn/modules/module.py", 1762, "_call_impl"),
        frame(f"{TORCH}/nn/modules/module.py", 1751, "_wrapped_call_impl"),
        frame(f"{PROJECT}/model.py", model_line, "forward"),
        frame(f"{TORCH}/nn/modules/module.py", 1762, "_call_impl"),
        frame(f"{PROJECT}/train.py", 42, "main"),
        frame(f"{PROJECT}/train.py", 61, "<module>"),
        frame("<frozen runpy>", 88, "_run_code"),
    ]


TIMM = [  # a library's layer: the user's line is the caller in train.py
    frame(f"{TORCH}/nn/functional.py", 1704, "gelu"),
    frame("/usr/local/lib/python3.12/dist-packages/timm/layers/mlp.py", 44, "forward"),
    frame(f"{TORCH}/nn/modules/module.py", 1762, "_call_impl"),
    frame(f"{PROJECT}/train.py", 45, "main"),
    frame(f"{PROJECT}/train.py", 61, "<module>"),
]


def segment(address, blocks, *, kind="large"):
    """A segment dict as torch writes it; ``blocks`` are (size, state, frames)."""
    out, addr = [], address
    for size, state, frames in blocks:
        out.append({"address": addr, "size": size, "requested_size": size if state != "inactive" else 0,
                    "state": state, "frames": frames})  # fmt: skip
        addr += size
    allocated = sum(b["size"] for b in out if b["state"] == "active_allocated")
    return {
        "device": 0, "address": address, "total_size": addr - address, "allocated_size": allocated,
        "active_size": allocated, "requested_size": allocated, "stream": 0, "segment_type": kind,
        "segment_pool_id": (0, 0), "is_expandable": False, "frames": [], "blocks": out,
    }  # fmt: skip


def snapshot(segments, traces=()):
    return {
        "segments": segments,
        "device_traces": [list(traces)],
        "allocator_settings": {"PYTORCH_CUDA_ALLOC_CONF": "", "max_split_size": -1, "garbage_collection_threshold": 0.0,
                               "expandable_segments": False, "pinned_num_register_threads": 1,
                               "release_lock_on_cudamalloc": False, "pinned_use_cuda_host_register": False,
                               "roundup_power2_divisions": {"1": 0}},
        "external_annotations": [],
    }  # fmt: skip


def write(run_dir, snap, *, requested=2 * GIB, allocated=13 * GIB, reserved=13 * GIB + 200 * MIB, step=0,
          history=True, autocast=None, gpu=("Tesla T4", 15 * GIB, [7, 5]), alloc_conf=None, stack=None):  # fmt: skip
    """oom.json and oom_snapshot.pickle as the child's observer writes them."""
    with open(run_dir / "oom_snapshot.pickle", "wb") as fh:
        pickle.dump(snap, fh)
    report = {
        "schema": 1, "torch": "2.6.0+cu124", "history": history, "history_error": None, "library_paths": LIBS,
        "script_dir": PROJECT, "alloc_conf": alloc_conf, "snapshot": "oom_snapshot.pickle",
        "autocast": autocast,
        "gpu": {"name": gpu[0], "total_memory": gpu[1], "capability": gpu[2]},
        "events": [{"device": 0, "requested": requested, "device_used": reserved + 300 * MIB,
                    "device_free": gpu[1] - reserved - 300 * MIB, "t_s": 12.5, "step": step, "allocated": allocated,
                    "reserved": reserved, "stack": stack if stack is not None else linear_in(20)[3:]}],
    }  # fmt: skip
    (run_dir / "oom.json").write_text(json.dumps(report))


def held_by_lines():
    return snapshot([
        segment(0x7F0000000000, [(4 * GIB, "active_allocated", linear_in(20)), (2 * GIB, "active_allocated", linear_in(20)),
                                 (1 * GIB, "active_allocated", linear_in(27))]),
        segment(0x7F0200000000, [(5 * GIB, "active_allocated", TIMM), (200 * MIB, "inactive", [])]),
        segment(0x7F0400000000, [(1 * GIB, "active_pending_free", linear_in(27))]),
    ])  # fmt: skip


def test_live_blocks_are_grouped_by_the_users_own_line(tmp_path):
    write(tmp_path, held_by_lines())
    autopsy = _autopsy.load(tmp_path)
    assert [(h.where, h.bytes, h.blocks, h.via) for h in autopsy.holders] == [
        ("model.py:20 in forward", 6 * GIB, 2, None),
        ("train.py:45 in main", 5 * GIB, 1, "mlp.py:44 in forward"),  # timm's layer, called from the user's line
        ("model.py:27 in forward", 2 * GIB, 2, None),  # a block waiting to be freed still holds memory
    ]
    assert autopsy.failed_at == "model.py:20 in forward"
    assert autopsy.largest_free == 200 * MIB
    assert autopsy.lines() == [
        "asked for 2.0 GiB more at model.py:20 in forward, before the first optimizer step finished",
        "PyTorch had 13.0 GiB allocated and 13.2 GiB reserved of the Tesla T4 (15.0 GiB); 1.5 GiB was free on the device",
        "what held it, by the line of your code that allocated it:",
        "     6.0 GiB  model.py:20 in forward  [2 blocks]",
        "     5.0 GiB  train.py:45 in main (via mlp.py:44 in forward)  [1 block]",
        "     2.0 GiB  model.py:27 in forward  [2 blocks]",
    ]
    assert autopsy.history_hint() is None


def test_without_allocation_history_the_blocks_have_no_lines(tmp_path):
    blocks = [(3 * GIB, "active_allocated", []), (2 * GIB, "active_allocated", []), (1 * GIB, "inactive", [])]
    write(tmp_path, snapshot([segment(0x7F0000000000, blocks)]), history=False)
    autopsy = _autopsy.load(tmp_path)
    assert [(h.where, h.bytes, h.blocks) for h in autopsy.holders] == [("(no stack recorded)", 5 * GIB, 2)]
    assert autopsy.lines()[-1] == "2 live blocks (no source lines: allocation history was off)"
    assert autopsy.history_hint() == "run again with memory_history=True to see which lines of your script held the memory"


def test_the_fix_halves_the_batch_with_the_numbers(tmp_path):
    write(tmp_path, held_by_lines(), step=120, allocated=12 * GIB, requested=2 * GIB)
    rows = [Step(i, i, i, 1, 0, 3 * GIB, 13 * GIB, 12 * GIB, 13 * GIB, 3 * GIB) for i in range(1, 121)]
    autopsy = _autopsy.load(tmp_path, rows=rows, batch=_fit.find_batch_arg(["--batch-size", "64"]))
    kind, text = autopsy.fix()
    # needed at least 14 GiB, 3 GiB of it stays between steps: 32 needs 3 + 11/2 = 8.5 GiB, under 13.5 GiB
    assert kind == "batch"
    assert text == (
        "Halve the batch: --batch-size 64 → --batch-size 32 (and multiply gradient accumulation by 2 to keep the "
        "effective batch). The step needed at least 14.0 GiB of 15.0 GiB, of which 3.0 GiB stays between steps, "
        "so --batch-size 32 needs ≈8.5 GiB."
    )


def test_the_fix_lowers_the_batch_further_when_half_is_not_enough(tmp_path):
    write(tmp_path, held_by_lines(), step=5, allocated=30 * GIB, requested=2 * GIB, gpu=("Tesla T4", 15 * GIB, [7, 5]))
    rows = [Step(i, i, i, 1, 0, 1 * GIB, 2 * GIB, 2 * GIB, 2 * GIB, 1 * GIB) for i in range(1, 6)]
    kind, text = _autopsy.load(tmp_path, rows=rows, batch=_fit.find_batch_arg(["-b", "64"])).fix()
    assert kind == "batch" and text.startswith("Lower the batch: -b 64 → -b 16 (and multiply gradient accumulation by 4")


def test_fragmentation_gets_expandable_segments(tmp_path):
    pieces = []
    for _ in range(12):  # 12 x (256 MiB live, 256 MiB free): 3 GiB cached, no piece fits 512 MiB
        pieces += [(256 * MIB, "active_allocated", []), (256 * MIB, "inactive", [])]
    write(tmp_path, snapshot([segment(0x7F0000000000, pieces)]), requested=512 * MIB, allocated=9 * GIB,
          reserved=12 * GIB, history=False)  # fmt: skip
    autopsy = _autopsy.load(tmp_path, batch=_fit.find_batch_arg(["-b", "64"]))
    kind, text = autopsy.fix()
    assert kind == "expandable_segments"
    assert text == (
        "Memory is fragmented: 3.0 GiB is reserved by PyTorch but unallocated, in pieces smaller than the 512.0 MiB "
        "asked for (the largest is 256.0 MiB). Run with env={'PYTORCH_CUDA_ALLOC_CONF': 'expandable_segments:True'}."
    )
    write(tmp_path, snapshot([segment(0x7F0000000000, pieces)]), requested=512 * MIB, allocated=9 * GIB,
          reserved=12 * GIB, alloc_conf="expandable_segments:True")  # fmt: skip
    assert _autopsy.load(tmp_path, batch=_fit.find_batch_arg(["-b", "64"])).fix()[0] == "batch"  # already on


def test_bf16_on_a_t4_gets_fp16(tmp_path):
    write(tmp_path, held_by_lines(), autocast="bfloat16")
    kind, text = _autopsy.load(tmp_path).fix()
    assert kind == "bf16_on_t4"
    assert text.startswith("Use float16 autocast instead of bfloat16: the Tesla T4 (sm_75) has no native bfloat16.")


@pytest.mark.parametrize(("gpu", "dtype"), [(("Tesla T4", 15 * GIB, [7, 5]), "torch.float16"),
                                            (("NVIDIA A100-SXM4-40GB", 40 * GIB, [8, 0]), "torch.bfloat16")])  # fmt: skip
def test_fp32_training_gets_mixed_precision_for_its_gpu(tmp_path, gpu, dtype):
    write(tmp_path, held_by_lines(), gpu=gpu)
    kind, text = _autopsy.load(tmp_path).fix()
    assert kind == "fp16" and f"torch.autocast('cuda', dtype={dtype})" in text


def test_mixed_precision_already_gets_activation_checkpointing(tmp_path):
    write(tmp_path, held_by_lines(), autocast="float16")
    assert _autopsy.load(tmp_path).fix()[0] == "checkpointing"


def test_a_model_that_alone_does_not_fit(tmp_path):
    write(tmp_path, held_by_lines(), step=1, allocated=14 * GIB, requested=1 * GIB)
    rows = [Step(1, 1, 1, 1, 0, 14 * GIB, 14 * GIB, 14 * GIB, 14 * GIB, 14 * GIB)]
    kind, text = _autopsy.load(tmp_path, rows=rows, batch=_fit.find_batch_arg(["-b", "8"])).fix()
    assert kind == "model" and text.startswith("The model alone does not fit: 14.0 GiB stays allocated between steps")


def test_a_snapshot_holding_an_object_is_refused(tmp_path):
    write(tmp_path, held_by_lines())

    class Evil:
        def __reduce__(self):
            return (print, ("never run",))

    (tmp_path / "oom_snapshot.pickle").write_bytes(pickle.dumps({"segments": [Evil()]}))
    with pytest.raises(pickle.UnpicklingError, match="holds no objects, found builtins.print"):
        _autopsy.read_snapshot(tmp_path / "oom_snapshot.pickle")
    autopsy = _autopsy.load(tmp_path)
    assert autopsy.holders == () and autopsy.snapshot_path is None
    assert autopsy.notes == ("(the memory snapshot could not be read: a memory snapshot holds no objects, found builtins.print)",)


def test_no_record_no_autopsy(tmp_path):
    assert _autopsy.load(tmp_path) is None
    (tmp_path / "oom.json").write_text('{"events": []}')
    assert _autopsy.load(tmp_path) is None


def test_summary_fields(tmp_path):
    write(tmp_path, held_by_lines())
    assert _autopsy.load(tmp_path).to_json() == {
        "oom_requested_bytes": 2 * GIB, "oom_allocated_bytes": 13 * GIB, "oom_reserved_bytes": 13 * GIB + 200 * MIB,
        "oom_fix": "fp16", "oom_failed_at": "model.py:20 in forward", "oom_top_holder": "model.py:20 in forward",
    }  # fmt: skip


def test_under_torchrun_the_rank_that_ran_out_is_read(tmp_path):
    write(tmp_path, held_by_lines())
    (tmp_path / "oom.json").rename(tmp_path / "oom-rank1.json")
    assert _autopsy.load(tmp_path).failed_at == "model.py:20 in forward"
