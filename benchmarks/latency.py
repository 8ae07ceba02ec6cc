"""Latency per stage and end to end: PyTorch reference vs the onnxruntime runtime, side by side.

Builds a bundle (random weights by default: speed does not depend on weight values), then runs
both detectors interleaved on the same images, prints a table and writes JSON.

  python benchmarks/latency.py --arch ViT-B-16 --image-size 224
  python benchmarks/latency.py --arch ViT-L-14-336 --image-size 518 --runs 20
  python benchmarks/latency.py --method sdpplus --arch ViT-B-16-plus-240 --image-size 240

For --method fnn the FNN is trained on a token 200 prompt pairs for one epoch: its size, not its
training, decides its speed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

from zsad_edge.benchmarks.reports import machine_info, random_bundle, write_report
from zsad_edge.export.cli.arguments import method_options
from zsad_edge.runtime.backends.components import BACKENDS
from zsad_edge.runtime.bench.record import batch_of, bench_images
from zsad_edge.runtime.bench.timing import benchmark_interleaved, format_table
from zsad_edge.runtime.detector import Detector

METHODS = method_options()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=METHODS, default="aprilgan")
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=20, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--images", nargs="*", default=[], help="image files/folders (default: synthetic 400x256 scans)"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default="cpu", help="runtime backend; its column is named by what runs"
    )
    parser.add_argument("--torch-device", default="cpu")
    parser.add_argument("--out", type=Path, help="JSON path (default ./latency_<arch>_<size>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    with tempfile.TemporaryDirectory() as scratch:
        built = random_bundle(args.arch, args.image_size, args.method, Path(scratch))
        runtime = Detector.from_bundle(built.path, backend=args.backend)
        runtime_label = f"{runtime.backend}_fp32"  # what runs: `auto` named by what it picked
        detectors = {"torch_eager_fp32": built.reference_detector(device=args.torch_device), runtime_label: runtime}
        images = batch_of(bench_images(args.images), args.batch_size)
        cases = {name: (detector, images) for name, detector in detectors.items()}
        times = benchmark_interleaved(cases, args.runs, args.warmup)
        providers = runtime.providers

    table = format_table(times, baseline="torch_eager_fp32")
    title = f"{args.method}: {args.arch} @ {args.image_size}px, batch {args.batch_size}, median of {args.runs} runs"
    print(f"{title}\n\n{table}")
    report = {
        "benchmark": "latency",
        "method": args.method,
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "runs": args.runs,
        "warmup": args.warmup,
        "weights": "random",
        "runtime_backend": runtime.backend,
        "runtime_providers": providers,
        "machine": machine_info(),
        "median_ms": {name: t.medians() for name, t in times.items()},
        "iqr_ms": {name: t.spreads() for name, t in times.items()},
    }
    suffix = "" if args.method == "aprilgan" else f"_{args.method}"
    write_report(report, args.out, f"latency_{args.arch}_{args.image_size}{suffix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
