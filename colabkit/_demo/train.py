"""colabkit demo: fit y = 3x + 2 by gradient descent, with torch, numpy or plain Python.

Run it through colabkit to see live output, a tqdm bar kept on one line, and GPU memory:

    colabkit.run("train.py", "--epochs", "3")
"""

import argparse
import math
import random
import signal
import sys
import time

from tqdm import tqdm

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
parser.add_argument("--batch", type=int, default=4096)
parser.add_argument("--sleep", type=float, default=0.002, help="seconds per step, to watch it go")
args = parser.parse_args()

stop = False


def _on_sigterm(signum, frame):  # colabkit sends SIGTERM before a time budget ends: stop cleanly
    global stop
    stop = True


signal.signal(signal.SIGTERM, _on_sigterm)

try:
    import torch

    backend = "torch"
except ImportError:
    try:
        import numpy as np

        backend = "numpy"
    except ImportError:
        backend = "python"

random.seed(0)
if backend == "torch":
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    w = torch.zeros(1, device=device, requires_grad=True)
    b = torch.zeros(1, device=device, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.1)

    def step():
        x = torch.rand(args.batch, device=device)
        y = 3 * x + 2 + 0.01 * torch.randn(args.batch, device=device)
        loss = ((w * x + b - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    params = lambda: (w.item(), b.item())
elif backend == "numpy":
    device = "cpu"
    rng = np.random.default_rng(0)
    state = {"w": 0.0, "b": 0.0}

    def step():
        x = rng.random(args.batch)
        y = 3 * x + 2 + 0.01 * rng.standard_normal(args.batch)
        err = state["w"] * x + state["b"] - y
        state["w"] -= 0.1 * 2 * float((err * x).mean())
        state["b"] -= 0.1 * 2 * float(err.mean())
        return float((err**2).mean())

    params = lambda: (state["w"], state["b"])
else:
    device = "cpu"
    state = {"w": 0.0, "b": 0.0}
    batch = min(args.batch, 256)

    def step():
        gw = gb = total = 0.0
        for _ in range(batch):
            x = random.random()
            err = state["w"] * x + state["b"] - (3 * x + 2)
            gw += err * x
            gb += err
            total += err * err
        state["w"] -= 0.1 * 2 * gw / batch
        state["b"] -= 0.1 * 2 * gb / batch
        return total / batch

    params = lambda: (state["w"], state["b"])

print(f"backend: {backend} on {device}, {args.epochs} epochs x {args.steps} steps", flush=True)
loss = math.nan
for epoch in range(1, args.epochs + 1):
    bar = tqdm(range(args.steps), desc=f"epoch {epoch}/{args.epochs}", file=sys.stdout, mininterval=0.1)
    for _ in bar:
        loss = step()
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if args.sleep:
            time.sleep(args.sleep)
        if stop:
            break
    bar.close()
    w_now, b_now = params()
    print(f"epoch {epoch}: loss {loss:.5f}  w={w_now:.3f} b={b_now:.3f}", flush=True)
    if stop:
        print("SIGTERM received: stopping early, state kept", flush=True)
        break

w_now, b_now = params()
ok = abs(w_now - 3) < 0.3 and abs(b_now - 2) < 0.3
print(f"done: w={w_now:.3f} (true 3), b={b_now:.3f} (true 2): {'converged' if ok else 'not converged yet'}")
