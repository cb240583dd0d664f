"""A child printing 200k lines: through ``colabkit.run()`` against ``subprocess.run`` writing to a file.

Both children get ``PYTHONUNBUFFERED=1`` in the fair comparison (run() sets it so output is live); the
buffered baseline (plain ``python script > file``) is printed too. Target: run() <= 1.2x.

    python bench/streaming.py [--lines 200000] [--repeat 3]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
