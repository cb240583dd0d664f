"""How much ``import colabkit`` adds to interpreter start-up.

Runs ``python -c pass`` and ``python -c "import colabkit"`` interleaved (so drift hits both alike) and
prints both medians and their ratio, measured in this one run. Target: ratio <= 1.3.

    python3 bench/import_time.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET = 1.3


def _wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    args = parser.parse_args(argv)
    _wall("import colabkit")  # warm the file cache and bytecode before measuring
    bare, with_colabkit = [], []
    for _ in range(args.runs):
        bare.append(_wall("pass"))
        with_colabkit.append(_wall("import colabkit"))
    base, ours = statistics.median(bare), statistics.median(with_colabkit)
    ratio = ours / base
    print(f"python -c pass              median {base * 1000:7.1f} ms over {args.runs} runs")
    print(f"python -c 'import colabkit' median {ours * 1000:7.1f} ms over {args.runs} runs")
    print(f"ratio {ratio:.2f} (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
