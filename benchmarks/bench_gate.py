"""How often does the latency gate cry wolf, and does it catch a real slowdown?

Records a baseline of a bundle with `zsad-edge bench` settings, then re-records --repeats times
unchanged and counts how many comparisons fail (exit 1: a false alarm) or come out inconclusive;
then once with two CPU-burning competitor processes and once with one onnxruntime thread instead
of two, which must fail.

  python benchmarks/bench_gate.py                         # the tiny demo model, batch 4, 20 runs
  python benchmarks/bench_gate.py --bundle bundles/weld --batch-size 1 --runs 30
  python benchmarks/bench_gate.py --out benchmarks/results/bench_gate.json
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from zsad_edge.benchmarks.reports import machine_info, write_report
from zsad_edge.runtime.bench.compare import compare
from zsad_edge.runtime.bench.record import BenchSettings, record


def _verdicts(comparison) -> dict:
    metrics = [m for ms in comparison.metrics.values() for m in ms]
    return {
        "exit_code": comparison.exit_code,
        "regressions": comparison.regressions,
        "inconclusive": [m.metric for m in metrics if m.verdict == "inconclusive"],
        "end_to_end_ratio": next(m.ratio for m in metrics if m.metric == "end_to_end"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="default: a freshly built tiny demo bundle")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="JSON path (default ./bench_gate.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle
        if bundle is None:
            from zsad_edge.export.build import build_bundle
            from zsad_edge.export.demo import demo_config

            bundle = build_bundle(demo_config(Path(scratch) / "tiny", overwrite=False)).path

        def run(threads: int = args.threads) -> dict:
            settings = BenchSettings(batch_sizes=[args.batch_size], runs=args.runs, threads=threads, cold_start=False)
            return record(bundle, settings)

        baseline = run()
        repeats = []
        for index in range(args.repeats):
            repeats.append(_verdicts(compare(baseline, run())))
            print(f"unchanged rerun {index + 1}: {repeats[-1]}")
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            competitor = _verdicts(compare(baseline, run()))
        finally:
            for burner in burners:
                burner.kill()
        one_thread = _verdicts(compare(baseline, run(threads=1)))
    false_alarms = sum(r["exit_code"] != 0 for r in repeats)
    passed = args.repeats - false_alarms
    print(f"\nunchanged reruns: {passed} of {args.repeats} pass (exit 0), {false_alarms} false alarms;")
    print(f"  with inconclusive metrics: {sum(bool(r['inconclusive']) for r in repeats)} of {args.repeats}")
    print(f"two CPU burners: exit {competitor['exit_code']}, end-to-end x{competitor['end_to_end_ratio']:.2f}")
    ratio = one_thread["end_to_end_ratio"]
    print(f"one thread instead of {args.threads}: exit {one_thread['exit_code']}, end-to-end x{ratio:.2f}")
    report = {
        "benchmark": "bench_gate",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "unchanged": repeats,
        "false_alarms": false_alarms,
        "competitor": competitor,
        "one_thread": one_thread,
        "machine": machine_info(),
    }
    write_report(report, args.out, "bench_gate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
