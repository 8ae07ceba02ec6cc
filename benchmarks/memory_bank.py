"""Few-shot memory bank search speed: k shots at a given grid and width, all taps, one query image.

Token values do not change the cost, so random tokens stand in for real ones.

  python benchmarks/memory_bank.py                       # APRIL-GAN: 4 taps, 37x37 grid, width 1024
  python benchmarks/memory_bank.py --shots 1 4 16 --grid 37 --width 1024
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from zsad_edge.runtime.stages.memory_bank import MemoryBank

RESULTS = Path("memory_bank.json")  # the current folder: never into the checkout by default


def time_search(shots: int, taps: int, grid: int, width: int, runs: int) -> dict:
    rng = np.random.default_rng(0)
    bank = MemoryBank.from_taps(rng.standard_normal((shots, taps, grid * grid, width), dtype=np.float32), "bench")
    query = rng.standard_normal((1, taps, grid * grid, width), dtype=np.float32)
    bank.distances(query)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        bank.distances(query)
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "shots": shots,
        "bank_tokens_per_tap": shots * grid * grid,
        "bank_mb": bank.tokens.nbytes / 2**20,
        "median_ms": float(np.median(samples)),
        "gmac": taps * (grid * grid) ** 2 * shots * width / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--taps", type=int, default=4)
    parser.add_argument("--grid", type=int, default=37)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON path (default ./memory_bank.json)")
    args = parser.parse_args(argv)
    rows = [time_search(k, args.taps, args.grid, args.width, args.runs) for k in args.shots]
    print(
        f"memory bank search, {args.taps} taps, {args.grid}x{args.grid} grid, width {args.width}, "
        f"median of {args.runs}\n"
    )
    print("| shots | bank tokens/tap | bank MB | GMAC | median ms |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['shots']} | {row['bank_tokens_per_tap']} | {row['bank_mb']:.0f} | {row['gmac']:.1f} "
            f"| {row['median_ms']:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"benchmark": "memory_bank", **vars(args), "out": str(args.out), "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
