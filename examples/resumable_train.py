"""A training loop that survives disconnects and time budgets.

* resumes from ``$COLABKIT_RESUME`` (set by ``colabkit.run(..., resume=True)``) when it is there;
* saves a checkpoint every ``--save-every`` steps with ``colabkit.save`` (atomic, keeps the newest 3);
* on SIGTERM (sent by ``colabkit.run(..., budget="2h")`` before the budget ends, or by ``kill``) it
  finishes the current step, saves, and exits 0.

Run it twice to see the resume::

    python examples/resumable_train.py --steps 50 --ckpt-dir checkpoints     # Ctrl-C or kill midway
    COLABKIT_RESUME=$(ls -t checkpoints/ckpt-* | head -1) python examples/resumable_train.py --steps 50
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import colabkit
from colabkit.checkpoint import load

stop_requested = False


def on_sigterm(signum, frame):
    # Only set a flag: saving from inside a signal handler could interrupt a save already running.
    global stop_requested
    stop_requested = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ckpt-dir", default="checkpoints")
    parser.add_argument("--save-every", type=int, default=1)
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds of pretend work per step")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    state = {"step": 0, "loss_history": []}
    resume = os.environ.get("COLABKIT_RESUME")
    if resume:
        state = load(resume)
        print(f"resumed from {resume} at step {state['step']}", flush=True)

    print(f"training from step {state['step']} to {args.steps}", flush=True)
    while state["step"] < args.steps:
        time.sleep(args.step_time)  # one step of training
        state["step"] += 1
        state["loss_history"].append(1.0 / state["step"])
        if state["step"] % args.save_every == 0 or stop_requested:
            path = colabkit.save(state, args.ckpt_dir)
            print(f"step {state['step']} saved {path.name}", flush=True)
        if stop_requested:
            print(f"stopped by SIGTERM at step {state['step']}; resume from {path}", flush=True)
            return 0
    print(f"done: {state['step']} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
