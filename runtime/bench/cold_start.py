"""Cold start, measured in fresh interpreters as a station restart sees it: bundle load with full
verification (no stamp), load with the verification stamp, first-frame latency, peak memory.

  python -m zsad_edge.runtime.bench.cold_start BUNDLE --backend cpu --precision fp32 [--full]
prints one JSON line; `measure` runs it twice (full, then stamped) and merges the answers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ZsadEdgeError

TIMEOUT_S = 600


def _one(bundle: Path, backend: str, precision: str, threads: int | None, full: bool) -> dict:
    from ..bundle import stamp_path
    from ..detector import Detector

    if full:
        stamp_path(bundle).unlink(missing_ok=True)
    began = time.perf_counter()
    detector = Detector.from_bundle(bundle, backend=backend, precision=precision, intra_op_threads=threads)
    loaded = time.perf_counter()
    detector(np.zeros((256, 400), np.uint8))
    first = time.perf_counter()
    return {
        "load_s": loaded - began,
        "first_frame_ms": (first - loaded) * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(bundle: Path, backend: str, precision: str, threads: int | None) -> dict:
    """Full-verification load, then stamped load with first frame and peak memory, each in a new process."""
    answers = {}
    for full in (True, False):
        command = [sys.executable, "-m", __name__, str(bundle), "--backend", backend, "--precision", precision]
        command += ["--full"] if full else []
        command += ["--threads", str(threads)] if threads else []
        proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ZsadEdgeError(f"cold-start measurement failed: {last}")
        answers[full] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "load_full_verify_s": answers[True]["load_s"],
        "load_stamped_s": answers[False]["load_s"],
        "first_frame_ms": answers[False]["first_frame_ms"],
        "peak_rss_mb": answers[False]["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--full", action="store_true", help="remove the verification stamp first")
    args = parser.parse_args()
    print(json.dumps(_one(args.bundle, args.backend, args.precision, args.threads, args.full)))


if __name__ == "__main__":
    main()
