"""Precision variants vs onnxruntime fp32: end-to-end latency and drift, on one bundle.

Builds a bundle (random weights by default), adds the int8 (static Q/DQ), int8-dynamic and fp16
variants calibrated on normal images, then
1. times every precision end to end, interleaved on the same image (medians of --runs);
2. measures drift against fp32 on the test images: per-image anomaly-map Pearson, map error,
   image-score Spearman (calibration/drift.py), over every image under the dataset's test/.
The drift gate is off here (the numbers are the point); builds keep it on.

  python benchmarks/precision.py ../shared/data/battery_weld
  python benchmarks/precision.py ../shared/data/battery_weld --arch ViT-L-14-336 --image-size 518 --runs 10
  python benchmarks/precision.py ../shared/data/battery_weld --precisions int8 int8-dynamic --weight-bits 8
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

from zsad_edge.benchmarks.reports import machine_info, random_bundle, write_report
from zsad_edge.calibration.drift import DriftTolerance, measure_drift
from zsad_edge.calibration.precision import CALIBRATION_METHODS, PRECISIONS
from zsad_edge.calibration.variants import add_precision, load_calibration_images
from zsad_edge.export.cli.arguments import method_options
from zsad_edge.runtime.bench.timing import benchmark_interleaved, format_table
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.image_io import list_images

NO_GATE = DriftTolerance(min_map_pearson=None, min_score_spearman=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="MVTec-layout category: train/good calibrates, test/ measures drift")
    parser.add_argument("--method", choices=method_options(), default="aprilgan")
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--calibration-count", type=int, default=32)
    parser.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="percentile")
    parser.add_argument("--weight-bits", choices=("auto", "7", "8"), default="auto", help="int8 weights (7: AVX2 CPUs)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per precision (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON path (default ./precision_<arch>_<size>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    calibration = load_calibration_images([args.dataset / "train" / "good"], args.calibration_count)
    test_images = [str(p) for p in list_images([args.dataset / "test"])]
    with tempfile.TemporaryDirectory() as scratch:
        built = random_bundle(args.arch, args.image_size, args.method, Path(scratch))
        for precision in args.precisions:
            add_precision(built.path, precision, calibration, args.calibration_method, NO_GATE, args.weight_bits)
        detectors = {
            p: Detector.from_bundle(built.path, backend="cpu", precision=p) for p in ["fp32", *args.precisions]
        }
        drift = {p: measure_drift(detectors["fp32"], detectors[p], test_images) for p in args.precisions}
        cases = {name: (detector, [calibration[0]]) for name, detector in detectors.items()}
        times = benchmark_interleaved(cases, args.runs, args.warmup)

    print(f"{args.method}: {args.arch} @ {args.image_size}px, onnxruntime CPU, batch 1, median of {args.runs} runs\n")
    print(format_table(times, baseline="fp32"))
    print(f"\ndrift vs fp32 on {len(test_images)} test images of {args.dataset}:\n")
    print("| precision | map Pearson mean | map Pearson min | map max error / range | score Spearman |")
    print("|---|---|---|---|---|")
    for precision, d in drift.items():
        print(
            f"| {precision} | {d['map_pearson_mean']:.4f} | {d['map_pearson_min']:.4f} | "
            f"{d['map_max_error_of_range']:.3f} | {d['score_spearman']:.4f} |"
        )
    report = {
        "benchmark": "precision",
        "method": args.method,
        "arch": args.arch,
        "image_size": args.image_size,
        "weights": "random",
        "dataset": str(args.dataset),
        "calibration_method": args.calibration_method,
        "weight_bits": args.weight_bits,
        "calibration_images": len(calibration),
        "test_images": len(test_images),
        "runs": args.runs,
        "machine": machine_info(),
        "median_ms": {name: t.medians() for name, t in times.items()},
        "iqr_ms": {name: t.spreads() for name, t in times.items()},
        "drift_vs_fp32": drift,
    }
    write_report(report, args.out, f"precision_{args.arch}_{args.image_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
