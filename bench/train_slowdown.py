"""Training throughput with the monitor off, sampling every 1 s and every 0.1 s, in one run.

The same small torch training loop runs in this process under ``colabkit.monitor()`` (the sampler
thread shares the interpreter with training: the harder case; ``run()`` samples from another process).
Rounds are interleaved and the best of each is kept. Target: >= 99 % of the throughput without it.

    python bench/train_slowdown.py [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import colabkit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (pip install torch)")
        return 0
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU visible to torch")
        return 0
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(args.width, args.width), torch.nn.GELU(), torch.nn.Linear(args.width, args.width)
    ).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(256, args.width, device="cuda")

    def steps(n: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            loss = model(x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        return n / (time.perf_counter() - t0)

    steps(20)  # warm up kernels and the allocator
    modes = {"off": None, "1 s": 1.0, "0.1 s": 0.1}
    best = dict.fromkeys(modes, 0.0)
    for _ in range(args.rounds):
        for name, interval in modes.items():
            ctx = contextlib.nullcontext() if interval is None else colabkit.monitor(interval=interval)
            with ctx:
                best[name] = max(best[name], steps(args.steps))
    print(
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.steps} steps x {args.rounds} rounds"
    )
    for name, value in best.items():
        print(f"  monitor {name:<6} {value:8.1f} steps/s  {value / best['off'] * 100:6.2f} % of off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
