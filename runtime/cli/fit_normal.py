"""`zsad-edge fit-normal`: a few-shot APRIL-GAN memory bank from k normal images (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import ImageReadError, ZsadEdgeError
from ..image_io import check_image, list_images
from ..stopping import Stopped, StopRequest
from .common import backend_arguments, open_detector, trust_arguments

HELP = "few-shot: build an APRIL-GAN memory bank from k normal images"
PARENTS = (backend_arguments(with_precision=False), trust_arguments())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("normal_images", nargs="+", help="the k normal images and/or folders")
    parser.add_argument("--out", type=Path, required=True, help="memory bank file (.npz), kept next to the bundle")
    parser.add_argument("--shots", type=int, help="use the first K readable images only (K >= 1)")


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    """Build the bank from the first K readable images and save it; unreadable ones are listed."""
    if args.shots is not None and args.shots < 1:
        raise ZsadEdgeError(f"--shots must be at least 1, got {args.shots}")
    detector = open_detector(args.bundle, args.backend, device=args.device)
    paths = list_images(args.normal_images)
    if not paths:
        raise ImageReadError(f"no images found in {', '.join(args.normal_images)}")
    images, skipped = [], []
    for path in stop.each(tqdm(paths, desc="fit-normal", unit="img", disable=len(paths) < 2, file=sys.stderr)):
        if args.shots is not None and len(images) == args.shots:
            break
        try:
            images.append(check_image(detector.read(path)))
        except ImageReadError as exc:
            skipped.append(str(exc))
    if stop.requested:
        raise Stopped(stop, len(images) + len(skipped), len(paths), "no memory bank written")
    if not images:
        raise ImageReadError(f"none of the {len(paths)} image(s) could be read: {'; '.join(skipped)}")
    bank = detector.fit_normal(images, stop=stop)
    bank.save(args.out)
    print(f"memory bank of {bank.shots} shot(s), {bank.tokens.shape[1]} tokens per tap, written to {args.out}")
    for reason in skipped:
        print(f"  skipped: {reason}")
    return 0
