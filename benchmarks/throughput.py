"""Images per second at batch 1, 2, 4 and 8 for every backend and precision: does batching pay?

A station batches frames across its sources (`watch --batch-size`), which buys throughput only
where a bigger batch runs the model at a better rate per image. On a CPU whose cores a batch of
one already keeps busy (large matrix multiplies), it does not, and a batch only adds the wait to
fill it; on a GPU, or with small graphs, it can. This measures it: every (candidate, batch size)
pair timed interleaved in one run, through the same `Detector` a station runs, on the dataset's
normal images (a batch cycles through them), in a process that has not loaded torch.

  python benchmarks/throughput.py ../shared/data/battery_weld --out benchmarks/results/throughput_ViT-B-16_224.json
  python benchmarks/throughput.py ../shared/data/battery_weld --arch ViT-L-14-336 --image-size 518 \
      --batch-sizes 1 2 4 --runs 3 --warmup 1 --bundle /tmp/vitl518
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report
from zsad_edge.benchmarks.roofline import build_with_the_cli, runtime_candidates
from zsad_edge.calibration.variants import load_calibration_images
from zsad_edge.runtime.backends.openvino import import_openvino, native_bf16
from zsad_edge.runtime.bench.record import batch_of
from zsad_edge.runtime.bench.timing import benchmark_interleaved
from zsad_edge.runtime.contract import APRILGAN, METHODS
from zsad_edge.runtime.detector import Detector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="MVTec-layout category: train/good calibrates and is timed")
    parser.add_argument("--method", choices=[m.option for m in METHODS.values()], default=APRILGAN.option)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calibration-count", type=int, default=32)
    parser.add_argument("--bundle", type=Path, help="build the bundle here and keep it (used as it is if complete)")
    parser.add_argument("--out", type=Path, help="JSON path (default ./throughput_<arch>_<size>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if min(args.batch_sizes) < 1:
        raise SystemExit("--batch-sizes must all be at least 1")

    images = load_calibration_images([args.dataset / "train" / "good"], max(8, *args.batch_sizes))
    bf16 = native_bf16(import_openvino().Core())
    precisions = ["int8", *(["bf16"] if bf16 else [])]
    with tempfile.TemporaryDirectory() as scratch:
        bundle = build_with_the_cli(args.method, args.arch, args.image_size, args.dataset, args.calibration_count,
                                    args.bundle or Path(scratch) / "bundle", precisions)  # fmt: skip
        detectors = {
            f"{b}/{p}": Detector.from_bundle(bundle, backend=b, precision=p) for b, p in runtime_candidates(bf16)
        }
        if "torch" in sys.modules:
            raise SystemExit("torch was imported before timing: the rows would not be the runtime's own process")
        cases = {
            f"{name}/b{size}": (detector, batch_of(images, size))
            for name, detector in detectors.items()
            for size in args.batch_sizes
        }
        times = benchmark_interleaved(cases, args.runs, args.warmup, block=min(5, args.runs))

    rows: dict[str, dict[str, dict]] = {}
    for name in detectors:
        one = np.median(times[f"{name}/b{args.batch_sizes[0]}"].samples["end_to_end"]) / args.batch_sizes[0]
        rows[name] = {}
        for size in args.batch_sizes:
            samples = np.array(times[f"{name}/b{size}"].samples["end_to_end"]) / 1e3
            per_second = size / samples
            rows[name][str(size)] = {
                "images_per_s": float(np.median(per_second)),
                "images_per_s_iqr": [float(np.percentile(per_second, 25)), float(np.percentile(per_second, 75))],
                "batch_ms": float(np.median(samples) * 1e3),
                "gain_over_smallest_batch": float(one / 1e3 / np.median(samples / size)),
            }
    print(f"\n{args.method}, {args.arch} @ {args.image_size}: images per second (median of {args.runs}), and the")
    print(f"gain over batch {args.batch_sizes[0]} per image\n")
    print(format_rows(rows, args.batch_sizes))
    report = {
        "benchmark": "throughput",
        "method": args.method,
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_sizes": args.batch_sizes,
        "runs": args.runs,
        "images": f"{args.dataset}/train/good, cycled to fill each batch",
        "candidates": rows,
        "median_ms": {name: t.medians() for name, t in times.items()},
        "machine": machine_info(),
    }
    write_report(report, args.out, f"throughput_{args.arch}_{args.image_size}")
    return 0


def format_rows(rows: dict[str, dict[str, dict]], sizes: list[int]) -> str:
    """Markdown: one row per candidate, images/s (gain) per batch size."""
    lines = ["| candidate | " + " | ".join(f"batch {s}" for s in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name, by_size in rows.items():
        cells = [f"{r['images_per_s']:.2f}/s ({r['gain_over_smallest_batch']:.2f}x)" for r in by_size.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
