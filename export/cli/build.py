"""`build` (the default command): export a method's bundle, verified against PyTorch, written atomically.

Examples:
  python export/build_engines.py --method aprilgan --heads-checkpoint aprilgan_mvtec.pth \\
      --object-name "battery weld" --out bundles/weld
  python export/build_engines.py --method sdp --out bundles/weld_sdp
  python export/build_engines.py --method sdp --sam litemedsam --out bundles/weld_sam     # CLIP-SAM
  python export/build_engines.py --arch ViT-B-16 --random-init --random-heads --image-size 224 --out bundles/vitb16
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from zsad_edge.runtime.errors import ZsadEdgeError

from .arguments import (
    add_calibration_arguments,
    add_clip_arguments,
    add_sam_arguments,
    clip_spec_from_args,
    dataset_family,
)
from .variants import add_variants, calibration_images

HELP = "export a method's bundle (the default command)"
FNN_TRAINING_OPTIONS = ("fnn_pairs", "fnn_epochs")  # --fusion-weight: the plug-in refuses it
SAM_OPTIONS = ("sam_prompts", "sam_min_agreement", "sam_checkpoint", "random_sam")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zsad_edge.calibration.variants import VARIANTS

    add_clip_arguments(parser)
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument(
        "--heads-checkpoint",
        type=Path,
        help="trained linear heads (aprilgan, sdpplus): official APRIL-GAN or CLIP-AD checkpoints, or "
        "train-heads output",
    )
    heads.add_argument("--random-heads", action="store_true", help="random heads (tests and timing only)")
    parser.add_argument(
        "--gaussian-sigma",
        type=float,
        help="map smoothing in px at input size (default: sdp/fnn 8; sdpplus 8, or 2 with --dbscan visa; aprilgan 0)",
    )
    fnn = parser.add_argument_group("fnn method (defaults and their reasons: export/models/fnn.py)")
    fnn.add_argument("--fnn-pairs", type=int, help="random-word prompt pairs to train on (default 10000)")
    fnn.add_argument("--fnn-epochs", type=int, help="training epochs (default 20)")
    fnn.add_argument(
        "--fusion-weight", type=float, help="weight of the FNN vs the prompt score (default 0.5; 1: FNN alone)"
    )
    add_sam_arguments(parser)
    add_calibration_arguments(parser, VARIANTS)
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    parser.add_argument(
        "--parity-tolerance",
        type=float,
        default=1e-4,
        help="max error of each graph vs PyTorch, relative to the output range",
    )


def _refuse_foreign_options(args: argparse.Namespace) -> None:
    """An option that does not apply to the chosen method or lacks --sam is an error, not ignored."""
    from zsad_edge.export.methods import export_method

    dataset_family(args)
    if args.random_heads and not export_method(args.method).spec.trained_heads:
        raise ZsadEdgeError(f"--random-heads does not apply to --method {args.method}: it has no trained heads")
    if args.method != "fnn":
        for name in FNN_TRAINING_OPTIONS:
            if getattr(args, name) is not None:
                raise ZsadEdgeError(f"--{name.replace('_', '-')} does not apply to --method {args.method}")
    if args.sam is None:
        for name in SAM_OPTIONS:
            if getattr(args, name) not in (None, False):
                raise ZsadEdgeError(f"--{name.replace('_', '-')} needs --sam KIND")


def config_from_args(args: argparse.Namespace):
    from zsad_edge.export.build import BuildConfig
    from zsad_edge.export.models.fnn import FnnTrainConfig
    from zsad_edge.export.models.sam import SamSpec
    from zsad_edge.runtime.sam.cascade import CascadeConfig

    _refuse_foreign_options(args)
    fnn = FnnTrainConfig()
    fnn = replace(
        fnn, epochs=args.fnn_epochs or fnn.epochs, words=replace(fnn.words, pairs=args.fnn_pairs or fnn.words.pairs)
    )
    cascade = CascadeConfig(prompt_mode=args.sam_prompts or "points", min_agreement=args.sam_min_agreement or 0.0)
    return BuildConfig(
        clip=clip_spec_from_args(args),
        out_dir=args.out,
        method=args.method,
        object_name=args.object_name,
        taps=args.taps,
        heads_checkpoint=args.heads_checkpoint,
        random_heads=args.random_heads,
        gaussian_sigma=args.gaussian_sigma,
        dbscan=dataset_family(args),
        clipad_mode=args.clipad_mode,
        fusion_weight=args.fusion_weight,
        fnn=fnn,
        sam=SamSpec(args.sam, checkpoint=args.sam_checkpoint, random_init=args.random_sam) if args.sam else None,
        cascade=cascade,
        parity_tolerance=args.parity_tolerance,
        overwrite=args.overwrite,
    )


def run(args: argparse.Namespace) -> int:
    from zsad_edge.export.build import build_bundle

    config = config_from_args(args)
    images = calibration_images(args, args.precision)
    built = build_bundle(config)
    worst = max(r for p in built.manifest.parity.values() for r in p["relative_error"].values())
    print(f"bundle written to {built.path} (worst graph-vs-PyTorch relative error {worst:.2e})")
    heads = built.manifest.method["params"].get("heads", {})
    if built.manifest.clip["weights"]["kind"] == "random" or heads.get("kind") == "random":
        print("note: this bundle has random weights: for tests and timing only, never for inspection")
    add_variants(built.path, args, args.precision, images)
    return 0
