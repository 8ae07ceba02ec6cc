"""`zsad-edge eval`: image and pixel metrics on an MVTec-layout folder, optionally beside the PyTorch reference."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..detector import DetectorSpec
from ..errors import ZsadEdgeError
from ..image_io import write_bytes_atomic
from ..stopping import StopRequest
from .common import EXIT_PARTIAL, backend_arguments, ray_arguments, ray_options, trust_arguments

HELP = "image/pixel AUROC, AP, F1-max and AUPRO on an MVTec-layout folder"
PARENTS = (backend_arguments(), trust_arguments(), ray_arguments())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("dataset", type=Path, help="a category folder (with test/) or a folder of categories")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--memory-bank", type=Path, help="few-shot: evaluate with this memory bank")
    parser.add_argument(
        "--pixel-size",
        type=int,
        default=256,
        help="pixel metrics with the longest side at this size, aspect kept (0: original size)",
    )
    parser.add_argument(
        "--mask-threshold",
        type=float,
        default=0.0,
        help="a mask pixel is a defect above this fraction of full scale (0: any non-zero)",
    )
    reference = parser.add_argument_group("PyTorch reference (needs zsad-edge[export])")
    reference.add_argument("--reference", action="store_true", help="also run the reference rebuilt from the manifest")
    reference.add_argument("--clip-checkpoint", type=Path, help="the bundle's CLIP checkpoint")
    reference.add_argument("--heads-checkpoint", type=Path, help="the bundle's heads checkpoint")
    reference.add_argument("--sam-checkpoint", type=Path, help="the bundle's SAM checkpoint")


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    """Evaluate, print and write the report; 1 when images were skipped, 130/143 when stopped."""
    try:
        from ..evaluation.evaluate import evaluate, format_report
    except ImportError as exc:
        raise ZsadEdgeError(
            f"evaluation needs scikit-learn ({exc.name} missing): pip install 'zsad-edge[eval]'"
        ) from None
    from ..evaluation.dataset import scan_dataset

    if not 0.0 <= args.mask_threshold < 1.0:
        raise ZsadEdgeError(f"--mask-threshold must be in [0, 1), got {args.mask_threshold}")
    categories = scan_dataset(args.dataset)
    ray = ray_options(args)
    if ray is not None and args.reference:
        raise ZsadEdgeError("--ray scores with the runtime only: leave out --reference")
    spec = DetectorSpec(args.bundle, args.backend, args.precision, args.memory_bank, args.device)
    detectors = {"runtime": spec.open()}
    if args.reference:
        detectors["reference"] = _reference(args)
    report = evaluate(
        detectors, categories, pixel_size=args.pixel_size or None, stop=stop, mask_threshold=args.mask_threshold,
        ray=(spec, ray) if ray else None,
    )  # fmt: skip
    report["bundle"] = str(args.bundle)
    print(format_report(report))
    for name, category in report["categories"].items():
        for line in category["notes"] + category["skipped"]:
            print(f"  {name}: {line}")
    if args.out:
        write_bytes_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
    if report["stopped"]:
        print(report["stopped"] + (f"; report in {args.out}" if args.out else ""))
        return stop.exit_code
    if args.out:
        print(f"report written to {args.out}")
    return EXIT_PARTIAL if report["skipped_images"] else 0


def _reference(args: argparse.Namespace):
    try:
        from zsad_edge.export.build import reference_from_bundle
    except ImportError as exc:
        raise ZsadEdgeError(
            f"--reference needs the torch side ({exc.name} missing): pip install 'zsad-edge[export]'"
        ) from None
    reference = reference_from_bundle(
        args.bundle, args.clip_checkpoint, args.heads_checkpoint, sam_checkpoint=args.sam_checkpoint
    )
    if args.memory_bank is not None:
        reference.load_memory_bank(args.memory_bank)
    return reference
