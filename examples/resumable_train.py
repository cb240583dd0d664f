"""A training loop that survives disconnects and time budgets.

* resumes from ``--resume PATH`` or ``$COLABKIT_RESUME`` (set by ``colabkit.run(..., resume=True)``)
  when one is given;
* saves a checkpoint every ``--save-every`` steps with ``colabkit.save`` (atomic, keeps the newest 3)
  into ``--ckpt-dir``, by default ``$COLABKIT_CHECKPOINT_DIR`` (set by ``colabkit.run``), else ``checkpoints``;
* on SIGTERM (sent by ``colabkit.run(..., budget="2h")`` a grace period before the budget ends, or by
  ``kill``) it finishes the current step, saves, and exits 0.

From a notebook, the same cell starts fresh the first time and resumes after a disconnect::

    colabkit.run("examples/resumable_train.py", "--steps", 5000, resume=True, budget="2h")

By hand, run it twice to see the resume::

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

stop_requested = False


def on_sigterm(signum, frame):
    # Only set a flag: saving from inside a signal handler could interrupt a save already running.
    global stop_requested
    stop_requested = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ckpt-dir", default=os.environ.get("COLABKIT_CHECKPOINT_DIR") or "checkpoints")
    parser.add_argument("--resume", default=os.environ.get("COLABKIT_RESUME"), help="checkpoint to start from")
    parser.add_argument("--save-every", type=int, default=1)
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds of pretend work per step")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    state = {"step": 0, "loss_history": []}
    resume = args.resume
    if resume:
        state = colabkit.load(resume)
        print(f"resumed from {resume} at step {state['step']}", flush=True)

    print(f"training from step {state['step']} to {args.steps}", flush=True)
    while state["step"] < args.steps:
        time.sleep(args.step_time)  # one step of training
        state["step"] += 1
        state["loss_history"].append(1.0 / state["step"])
        stopping = stop_requested  # read once: the signal may arrive between the two checks below
        if state["step"] % args.save_every == 0 or stopping:
            path = colabkit.save(state, args.ckpt_dir)
            print(f"step {state['step']} saved {path.name}", flush=True)
        if stopping:
            print(f"stopped by SIGTERM at step {state['step']}; resume from {path}", flush=True)
            return 0
    print(f"done: {state['step']} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
