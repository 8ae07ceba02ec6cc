"""`zsad-edge calibrate`: score ranges and thresholds from a station's normal images."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..detector import DetectorSpec
from ..errors import ZsadEdgeError
from ..image_io import list_images
from ..signing import PASSWORD_ENV, SIGNATURE_FILE, open_secret_key, sign_manifest
from ..stopping import StopRequest
from .common import backend_arguments, ray_arguments, ray_options, trust_arguments

HELP = "set score ranges and thresholds from normal images"
PARENTS = (backend_arguments(with_precision=False), trust_arguments(), ray_arguments())


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
    parser.add_argument(
        "--resign", type=Path, metavar="KEY",
        help="a signed bundle: sign the calibrated manifest with this secret key (the manifest changes)",
    )  # fmt: skip


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    """Calibrate and write the constants into the manifest (or the bank) in one rename at the end."""
    from zsad_edge.calibration.scores import calibrate_memory_bank, calibrate_scores, write_scoring

    secret = _signing_key(args)  # before any work: a signed bundle is never left with a broken signature
    ray = ray_options(args)
    spec = DetectorSpec(args.bundle, args.backend, memory_bank=args.memory_bank, device=args.device)
    detector = spec.open()
    paths = list_images(args.normal_images)
    options = {
        "image_quantile": args.image_quantile,
        "pixel_quantile": args.pixel_quantile,
        "progress": len(paths) > 1,
        "stop": stop,
        "ray": (spec, ray) if ray else None,
    }
    if detector.memory_bank is not None:
        scoring = calibrate_memory_bank(detector, paths, **options)
        detector.memory_bank.save(args.memory_bank)
        target = args.memory_bank
    else:
        scoring = calibrate_scores(detector, paths, **options)
        write_scoring(args.bundle, scoring)
        target = args.bundle
        if secret is not None:
            with secret:
                print(f"signed the calibrated manifest with key {sign_manifest(args.bundle, secret)}")
    print(
        f"calibrated on {scoring['calibration']['images']} normal image(s): image threshold "
        f"{scoring['image_threshold']:.6g}, map threshold {scoring['map_threshold']:.6g}; written to {target}"
    )
    for reason in scoring["calibration"]["skipped"]:
        print(f"  skipped: {reason}")
    return 0


def _signing_key(args: argparse.Namespace):
    """The opened --resign key where the manifest will change; a signed bundle without one is refused
    (calibrating rewrites the signed manifest). A memory bank's constants go to the bank: no change."""
    if args.memory_bank is not None:
        return None
    if args.resign is None:
        if (args.bundle / SIGNATURE_FILE).exists():
            raise ZsadEdgeError(
                f"{args.bundle} is signed: calibrating rewrites its manifest and breaks the signature; pass "
                "--resign KEY to sign the calibrated manifest, or calibrate an unsigned copy"
            )
        return None
    return open_secret_key(args.resign, os.environ.get(PASSWORD_ENV) or None)
