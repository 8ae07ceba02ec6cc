"""`add-precision`: precision variants of a bundle's image encoder, each gated on its drift from fp32."""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad_edge.runtime.bundle import BASE_PRECISION
from zsad_edge.runtime.errors import ZsadEdgeError

from .arguments import add_calibration_arguments

HELP = "add int8 / int8-dynamic / fp16 / bf16 variants to a bundle, gated on drift vs fp32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zsad_edge.calibration.variants import VARIANTS

    parser.add_argument("bundle", type=Path, help="the bundle to add variants to")
    add_calibration_arguments(parser, VARIANTS)


def run(args: argparse.Namespace) -> int:
    if not args.precision:
        raise ZsadEdgeError("add-precision needs --precision (the variants to add)")
    add_variants(args.bundle, args, args.precision, calibration_images(args, args.precision))
    return 0


def calibration_images(args: argparse.Namespace, variants: list[str]) -> list:
    """The normal images for `variants` (none for fp32 alone); read before any slow work, so a wrong
    folder fails in seconds rather than after an export."""
    from zsad_edge.calibration.variants import load_calibration_images

    if not [v for v in variants if v != BASE_PRECISION]:
        return []
    if not args.calibration_images:
        raise ZsadEdgeError("--precision needs --calibration-images (normal images: INT8 ranges and the drift gate)")
    return load_calibration_images(args.calibration_images, args.calibration_count)


def add_variants(bundle: Path, args: argparse.Namespace, variants: list[str], images: list) -> None:
    """Add each variant with the drift bounds of `args`, measured on `images`."""
    from zsad_edge.calibration.drift import DriftTolerance
    from zsad_edge.calibration.variants import add_precision

    tolerance = DriftTolerance(args.min_map_pearson, args.min_score_spearman)
    for precision in [v for v in variants if v != BASE_PRECISION]:
        drift = add_precision(bundle, precision, images, args.calibration_method, tolerance, args.weight_bits)["drift"]
        print(
            f"{precision} variant added to {bundle}: map Pearson {drift['map_pearson_mean']:.4f} "
            f"(min {drift['map_pearson_min']:.4f}), score Spearman {drift['score_spearman']:.4f} vs fp32 "
            f"on {drift['images']} calibration images"
        )
