"""Step time of a small training loop without colabkit's optimizer-step hook, with it, and with memory history.

The hook is the one the training child installs (``colabkit._memhook``): a global optimizer-step post hook
that reads the caching allocator's counters, resets the peaks and appends a row to ``steps.csv``. The modes
alternate in short blocks of steps (so a busy machine's drift hits each alike) and the median block of
each mode is compared. On a GPU the third mode also records allocation history
as ``run(..., memory_history=True)`` does; on a CPU there is no CUDA allocator to record, so its cost is
estimated instead: allocations per step (counted with a dispatch mode) times the cost of the Python stack
capture torch takes per allocation (``CapturedTraceback::gather``, python frames only).
Targets: hook <= 0.2 ms per step and <= 1.01x; history <= 2 % of step time to be on by default.

    python bench/step_hook.py [--steps 10] [--rounds 300] [--width 512] [--batch 64] [--cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from colabkit import _memhook  # noqa: E402


def _allocations_per_step(torch, step) -> float:
    """Tensors created by one step (each a new block for the allocator), counted by a dispatch mode."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen = {id(a) for a in args if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    Count.n += 1
            return out

    with Count():
        for _ in range(5):
            step()
    return Count.n / 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--rounds", type=int, default=300, help="blocks of each mode")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (1: least noise)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (pip install torch)")
        return 0
    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(args.width, args.width), torch.nn.GELU(), torch.nn.Linear(args.width, args.width),
        torch.nn.GELU(), torch.nn.Linear(args.width, 10),
    ).to(device)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, args.width, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(n: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    folder = Path(tempfile.mkdtemp(prefix="colabkit-bench-"))
    watch = _memhook.Watch(str(folder / "steps.csv"), str(folder))
    watch.arm()  # torch is imported: registers the hook now (and the CUDA part, once CUDA is initialised)
    from torch.optim.optimizer import register_optimizer_step_post_hook as register

    hook = watch._hook
    hook.remove()

    def mode(name: str) -> None:
        nonlocal hook
        if name in ("hook", "hook + history") and hook is None:
            hook = register(watch.on_step)
        if name == "off" and hook is not None:
            hook.remove()
            hook = None
        if cuda:
            history = name == "hook + history"
            torch.cuda.memory._record_memory_history(
                enabled="all" if history else None, context="alloc", stacks="python", max_entries=_memhook.HISTORY_ENTRIES
            )

    modes = ["off", "hook"] + (["hook + history"] if cuda else [])
    timed(50)  # warm up kernels, the allocator and AdamW's state
    blocks: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(args.rounds):
        for name in modes if r % 2 == 0 else modes[::-1]:  # ABBA: drift of the machine hits each mode alike
            mode(name)
            blocks[name].append(timed(args.steps))
    best = {name: sorted(times)[len(times) // 2] for name, times in blocks.items()}  # the median block
    mode("off")
    watch.close()

    # the hook alone, called as optimizer.step() would
    n = 20_000
    t0 = time.perf_counter()
    for _ in range(n):
        watch.on_step(opt)
    alone_us = (time.perf_counter() - t0) / n * 1e6

    where = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"{where}, torch {torch.__version__}, MLP {args.width} wide, batch {args.batch}, "
          f"{args.rounds} blocks of {args.steps} steps per mode, alternating (median block)")  # fmt: skip
    off = best["off"]
    for name in modes:
        value = best[name]
        print(f"  {name:<15} {value * 1e3:8.3f} ms/step  {value / off:6.3f}x  (+{(value - off) * 1e6:7.1f} us/step)")
    print(f"  the hook alone: {alone_us:.1f} us per call ({'reads the CUDA counters' if watch.counters else 'no CUDA: time and row only'})")
    if not cuda:
        from torch._C._profiler import gather_traceback

        allocs = _allocations_per_step(torch, step)
        m = 20_000
        t0 = time.perf_counter()
        for _ in range(m):
            gather_traceback(python=True, script=True, cpp=False)
        gather_us = (time.perf_counter() - t0) / m * 1e6
        cost = allocs * gather_us
        print(f"  memory history: n/a without CUDA; estimated {allocs:.0f} allocations/step x {gather_us:.2f} us "
              f"(stack capture) = {cost:.0f} us/step = {cost / (off * 1e6) * 100:.1f} % of this step")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
