"""`zsad-edge bench BUNDLE`: per-stage latency, throughput and cold start for a matrix of backends,
precisions and batch sizes, measured in interleaved rounds; with --baseline, a verdict CI can act on.

Runs with the runtime alone (no torch). The record keeps the raw samples, each benchmark image's
outputs and the environment fingerprint, so it can serve as a baseline later (`--out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from ..backends.components import BACKENDS
from ..backends.openvino import DEVICES
from ..bench.compare import load_record
from ..bench.record import BenchSettings, record
from ..bench.report import record_table
from ..bundle import BASE_PRECISION
from ..errors import ZsadEdgeError
from ..image_io import write_bytes_atomic
from ..stopping import StopRequest
from .bench_compare import comparison_arguments, judge_records
from .common import trust_arguments

HELP = "time a bundle per stage (a matrix of backends, precisions, batch sizes); gate against a baseline"
PARENTS = (comparison_arguments(), trust_arguments())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    matrix = parser.add_argument_group("what to time")
    matrix.add_argument(
        "--backend", nargs="+", choices=BACKENDS, default=["auto"], help="as for detect; auto is timed as what it picks"
    )
    matrix.add_argument("--precision", nargs="+", default=[BASE_PRECISION], help="fp32 and/or the bundle's variants")
    matrix.add_argument("--batch-size", nargs="+", type=int, default=[1])
    matrix.add_argument("--device", choices=DEVICES, default="CPU", help="the OpenVINO device (--backend openvino)")
    matrix.add_argument("--images", help="a folder or file of images (default: synthetic 400x256 scans)")
    matrix.add_argument("--runs", type=int, default=30, help="timed samples per configuration")
    matrix.add_argument("--warmup", type=int, default=3)
    matrix.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: one per core)")
    matrix.add_argument("--no-cold-start", action="store_true", help="skip the cold-start measurement")
    parser.add_argument("--out", type=Path, help="write the record (JSON) here, e.g. to keep as a baseline")
    parser.add_argument("--baseline", type=Path, help="a stored record to judge this run against")
    parser.add_argument(
        "--no-confirm",
        action="store_true",
        help="fail on a first regression verdict instead of measuring the regressed configurations again",
    )


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    if args.runs < 3 or args.warmup < 0 or min(args.batch_size) < 1 or (args.threads is not None and args.threads < 1):
        raise ZsadEdgeError("--runs must be at least 3, --warmup >= 0, --batch-size and --threads >= 1")
    baseline = load_record(args.baseline) if args.baseline else None  # a bad baseline fails before timing
    settings = BenchSettings(
        backends=args.backend,
        precisions=args.precision,
        batch_sizes=args.batch_size,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        cold_start=not args.no_cold_start,
        images=args.images,
        device=args.device,
    )
    result = record(args.bundle, settings, stop)
    if args.out:
        write_bytes_atomic(args.out, (json.dumps(result) + "\n").encode())
    print(record_table(result), file=sys.stdout)
    for asked, reason in result["skipped"].items():
        print(f"skipped {asked}: {reason}", file=sys.stdout)
    if baseline is None:
        return 0
    print("", file=sys.stdout)

    def measure_again(configs: list[str]) -> dict:
        """The regressed configurations only, recorded anew with the same settings (no cold start)."""
        backends, precisions, batches = zip(*(key.split("/") for key in configs))
        narrowed = replace(
            settings,
            backends=sorted(set(backends)),
            precisions=sorted(set(precisions)),
            batch_sizes=sorted({int(b[1:]) for b in batches}),
            cold_start=False,
        )
        return record(args.bundle, narrowed, stop)

    return judge_records(baseline, result, args, None if args.no_confirm else measure_again)
