"""`zsad-edge calibrate`: score ranges and thresholds from a station's normal images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..image_io import list_images
from ..stopping import StopRequest
from .common import backend_arguments, open_detector

HELP = "set score ranges and thresholds from normal images"
PARENTS = (backend_arguments(with_precision=False),)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("normal_images", nargs="+", help="normal (defect-free) images and/or folders")
    parser.add_argument(
        "--image-quantile",
        type=float,
        default=1.0,
        help="image threshold = this quantile of normal image scores (1.0 = max)",
    )
    parser.add_argument(
        "--pixel-quantile", type=float, default=0.999, help="map threshold = this quantile of normal map pixels"
    )
    parser.add_argument(
        "--memory-bank", type=Path, help="few-shot: calibrate with this bank and store the constants in the bank file"
    )


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    """Calibrate and write the constants into the manifest (or the bank) in one rename at the end."""
    from zsad_edge.calibration.scores import calibrate_memory_bank, calibrate_scores, write_scoring

    detector = open_detector(args.bundle, args.backend, args.memory_bank, device=args.device)
    paths = list_images(args.normal_images)
    options = {
        "image_quantile": args.image_quantile,
        "pixel_quantile": args.pixel_quantile,
        "progress": len(paths) > 1,
        "stop": stop,
    }
    if detector.memory_bank is not None:
        scoring = calibrate_memory_bank(detector, paths, **options)
        detector.memory_bank.save(args.memory_bank)
        target = args.memory_bank
    else:
        scoring = calibrate_scores(detector, paths, **options)
        write_scoring(args.bundle, scoring)
        target = args.bundle
    print(
        f"calibrated on {scoring['calibration']['images']} normal image(s): image threshold "
        f"{scoring['image_threshold']:.6g}, map threshold {scoring['map_threshold']:.6g}; written to {target}"
    )
    for reason in scoring["calibration"]["skipped"]:
        print(f"  skipped: {reason}")
    return 0
