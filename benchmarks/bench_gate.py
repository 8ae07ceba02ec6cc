"""How often does the latency gate cry wolf, and how often does it catch a real 20 % slowdown?

Everything runs as CI runs it: `zsad-edge bench` in fresh processes. A baseline of the tiny demo
bundle is recorded first; then, with an intermittent CPU-burning process beside the runs (busy for
0.5-3 s, idle for 0.5-4 s, at random), the gate is run --repeats times against it unchanged (every
failure is a false alarm) and --slow-repeats times on the same model at 240 instead of 224 px (about
a fifth more work per image: a real slowdown, which each run should catch as a latency regression in
end_to_end or encode). The gate confirms a regression by measuring the regressed configuration
again before failing; --no-confirm shows what it would do without.

  python benchmarks/bench_gate.py --out benchmarks/results/bench_gate.json
  python benchmarks/bench_gate.py --repeats 5 --slow-repeats 3            # a quick look
  python benchmarks/bench_gate.py --background none --repeats 10 --out benchmarks/results/bench_gate_quiet.json
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]
INTERMITTENT_BURNER = """
import random, time
random.seed(7)
while True:
    busy_until = time.monotonic() + random.uniform(0.5, 3.0)
    while time.monotonic() < busy_until:
        pass
    time.sleep(random.uniform(0.5, 4.0))
"""
LATENCY_STAGES = ("end_to_end", "encode")


def _build(folder: Path, image_size: int) -> Path:
    from zsad_edge.export.build import BuildConfig, build_bundle
    from zsad_edge.export.demo import demo_config
    from zsad_edge.export.models.clip import ClipSpec

    base = demo_config(folder, overwrite=False)
    config = BuildConfig(
        clip=ClipSpec(base.clip.architecture, random_init=True, image_size=image_size),
        out_dir=folder,
        random_heads=True,
    )
    return build_bundle(config).path


def _gate(bundle: Path, baseline: Path, timing: list[str], verdict: Path, extra: list[str]) -> dict:
    """One `zsad-edge bench --baseline` in a fresh process; its exit code and verdict."""
    proc = subprocess.run(
        [*CLI, "bench", str(bundle), *timing, "--no-cold-start", "--baseline", str(baseline), "--json", str(verdict),
         *extra],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench failed: {proc.stderr.strip().splitlines()[-1]}")
    result = json.loads(verdict.read_text())
    metrics = {m["metric"]: m for ms in result["metrics"].values() for m in ms}
    return {
        "exit_code": proc.returncode,
        "latency_regressions": [r for r in result["regressions"] if not r.endswith(" outputs")],
        "unconfirmed": result["unconfirmed"],
        "inconclusive": [name for name, m in metrics.items() if m["verdict"] == "inconclusive"],
        "end_to_end_ratio": metrics["end_to_end"]["ratio"],
        "kernel_ratio": result["kernel_ratio"],
    }


def _caught(run: dict) -> bool:
    return any(r.split()[-1] in LATENCY_STAGES for r in run["latency_regressions"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="samples per stage in each bench run")
    parser.add_argument("--repeats", type=int, default=30, help="unchanged reruns (false alarms)")
    parser.add_argument("--slow-repeats", type=int, default=10, help="runs of the 20 %% slower model (detections)")
    parser.add_argument("--no-confirm", action="store_true", help="pass --no-confirm to every gate run")
    parser.add_argument(
        "--background", choices=("intermittent", "none"), default="intermittent", help="load beside the gate runs"
    )
    parser.add_argument("--out", type=Path, help="JSON path (default ./bench_gate.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    timing = ["--backend", "cpu", "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    timing += ["--runs", str(args.runs)]
    extra = ["--no-confirm"] if args.no_confirm else []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        bundle, slower = _build(scratch / "tiny224", 224), _build(scratch / "tiny240", 240)
        baseline = scratch / "base.json"
        subprocess.run([*CLI, "bench", str(bundle), *timing, "--no-cold-start", "--out", str(baseline)], check=True,
                       capture_output=True)  # fmt: skip
        loaded = args.background == "intermittent"
        burner = subprocess.Popen([sys.executable, "-c", INTERMITTENT_BURNER]) if loaded else None
        try:
            unchanged, slow = [], []
            for index in range(args.repeats):
                unchanged.append(_gate(bundle, baseline, timing, scratch / "verdict.json", extra))
                print(f"unchanged {index + 1}: {unchanged[-1]}", flush=True)
            for index in range(args.slow_repeats):
                slow.append(_gate(slower, baseline, timing, scratch / "verdict.json", [*extra, "--allow-env-change"]))
                print(f"20 % slower {index + 1}: {slow[-1]}", flush=True)
        finally:
            if burner is not None:
                burner.kill()
    false_alarms = sum(run["exit_code"] != 0 for run in unchanged)
    caught = sum(_caught(run) for run in slow)
    saved = sum(bool(run["unconfirmed"]) for run in unchanged)
    ratios = [run["end_to_end_ratio"] for run in slow]
    print(f"\nunchanged: {false_alarms} false alarm(s) in {len(unchanged)} runs; {saved} first verdicts not confirmed")
    print(f"  with inconclusive metrics: {sum(bool(r['inconclusive']) for r in unchanged)} of {len(unchanged)}")
    if slow:
        print(f"20 % slower model (end-to-end x{np.median(ratios):.2f} median): caught in {caught} of {len(slow)}")
    report = {
        "benchmark": "bench_gate",
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "background": "none"
        if args.background == "none"
        else "an intermittent CPU burner (busy 0.5-3 s, idle 0.5-4 s) beside every gate run",
        "unchanged": unchanged,
        "false_alarms": false_alarms,
        "slower": slow,
        "slowdown_detected": caught,
        "machine": machine_info(),
    }
    write_report(report, args.out, "bench_gate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
