"""A child printing 200k lines: through ``colabkit.run()`` against ``subprocess.run`` writing to a file; and a
line that keeps growing without a newline, as a notebook receives it.

Both children get ``PYTHONUNBUFFERED=1`` in the fair comparison (run() sets it so output is live); the
buffered baseline (plain ``python script > file``) is printed too. Target: run() <= 1.2x.

The growing line: a child writes a 50 KB line without a newline in 100-byte pieces over ~5 s, under
``colabkit.run()`` in a real Jupyter kernel (ipykernel, through jupyter_client); the bytes of stream text
the kernel sent to the notebook, as a ratio to the line's size. Target: <= 2 (before, each refresh sent
the whole line again: 3 MB for 50 KB, ~60x).

    python bench/streaming.py [--lines 200000] [--repeat 3] [--skip-kernel]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import colabkit

CHILD = """
import sys
for i in range({lines}):
    print(f"step {{i}} loss 0.{{i % 1000:03d}} lr 3e-4 tokens/s 12345.6")
"""


def baseline(script: Path, out: Path, unbuffered: bool) -> float:
    env = dict(os.environ)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    else:
        env.pop("PYTHONUNBUFFERED", None)
    t0 = time.perf_counter()
    with open(out, "wb") as fh:
        subprocess.run(
            [sys.executable, str(script)], stdout=fh, stderr=subprocess.STDOUT, check=True, env=env
        )
    return time.perf_counter() - t0


def through_run(script: Path, folder: Path, monitor: bool) -> float:
    screen = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(screen):
        r = colabkit.run(str(script), cwd=folder, log_dir=str(folder / "runs"), monitor=monitor)
    elapsed = time.perf_counter() - t0
    assert r.log_path.stat().st_size > 0
    return elapsed


GROWING = """
import sys, time
for i in range(500):
    sys.stdout.write("%04d" % (i % 10000) + "x" * 96)  # 100 bytes, no newline
    sys.stdout.flush()
    time.sleep(0.01)
"""
GROWING_BYTES = 500 * 100


def growing_line_in_a_notebook(folder: Path) -> tuple[int, int, int]:
    """Run GROWING through run() in a real kernel: (stream bytes sent, stream messages, display updates)."""
    import queue

    from jupyter_client.manager import KernelManager

    (folder / "grow.py").write_text(GROWING)
    env = dict(os.environ)
    env.pop("COLABKIT_DISPLAY", None)  # the kernel finds out by itself that it is a notebook
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(folder))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute(
            f"import colabkit; r = colabkit.run({str(folder / 'grow.py')!r}, monitor=False, log_dir={str(folder / 'runs')!r})"
        )
        sent = streams = updates = 0
        while True:
            try:
                msg = kc.get_iopub_msg(timeout=60)
            except queue.Empty:
                raise RuntimeError("the kernel stopped answering") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":  # all of it, colabkit's own closing lines too (a few hundred bytes)
                sent += len(msg["content"]["text"].encode())
                streams += 1
            elif kind == "update_display_data":
                updates += 1
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
        return sent, streams, updates
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-kernel", action="store_true", help="leave out the growing line in a notebook")
    args = parser.parse_args()
    os.environ.setdefault("COLABKIT_DISPLAY", "plain")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "chatty.py"
        script.write_text(CHILD.format(lines=args.lines))
        times: dict[str, list[float]] = {
            "file, buffered": [],
            "file, unbuffered": [],
            "run()": [],
            "run(monitor=False)": [],
        }
        for _ in range(args.repeat):  # interleaved so drift in machine load hits all alike
            times["file, buffered"].append(baseline(script, folder / "out.txt", unbuffered=False))
            times["file, unbuffered"].append(baseline(script, folder / "out.txt", unbuffered=True))
            times["run()"].append(through_run(script, folder, monitor=True))
            times["run(monitor=False)"].append(through_run(script, folder, monitor=False))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{args.lines:,} lines, median of {args.repeat}, {os.cpu_count()} CPUs")
        for name, value in med.items():
            print(f"  {name:<20} {value:6.2f} s")
        ref = med["file, unbuffered"]
        print(
            f"run() / subprocess.run to a file (both unbuffered): {med['run()'] / ref:.2f}x (target <= 1.2x)"
        )
        print(
            f"run() / subprocess.run to a file (buffered child):  {med['run()'] / med['file, buffered']:.2f}x"
        )
        if not args.skip_kernel:
            sent, streams, updates = growing_line_in_a_notebook(folder)
            print(
                f"a {GROWING_BYTES // 1000} KB line without newline, in a notebook: {sent:,} bytes of stream text in "
                f"{streams} messages ({updates} status updates): {sent / GROWING_BYTES:.2f}x its size (target <= 2)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
