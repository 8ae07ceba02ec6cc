"""Command-line options shared by the torch-side tools (build_engines.py, train_heads.py).

Both name the CLIP model and the layers it is tapped at the same way, so a heads checkpoint
trained with one set of flags is exported with the same flags.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

from .defaults import ACTIVATION_CHOICES, CLIPAD_MODES, METHOD_DEFAULTS


def add_clip_arguments(parser: argparse.ArgumentParser, methods: tuple[str, ...]) -> None:
    """--method, --arch, one weight source, --image-size, --taps, --object-name, -v.

    CLIP flags left out take the chosen method's published setting (export/defaults.py).
    """
    parser.add_argument("--method", choices=methods, default=methods[0],
                        help="anomaly method; sets the default CLIP, size and prompts")
    weights = parser.add_argument_group("CLIP (one weight source; defaults follow --method)")
    weights.add_argument("--arch", help="open_clip architecture name (aprilgan: ViT-L-14-336, sdp: ViT-B-16-plus-240)")
    weights.add_argument("--pretrained", default=None,
                         help="open_clip pretrained tag (default: the method's, when no other source is given)")
    weights.add_argument("--clip-checkpoint", type=Path, help="local open_clip checkpoint (.pt/.bin/.safetensors)")
    weights.add_argument("--random-init", action="store_true", help="random CLIP weights (tests and timing only)")
    parser.add_argument("--image-size", type=int, help="input size in px (aprilgan: 518, sdp: 240)")
    parser.add_argument("--activation", choices=ACTIVATION_CHOICES, default="auto",
                        help="CLIP MLP activation; auto: as the official code builds it (GELU for APRIL-GAN at 518 px, "
                             "QuickGELU for OpenAI tags at their own size); recorded in the manifest")
    parser.add_argument("--taps", type=int, nargs="+",
                        help="1-based block indices (default: 4 evenly spaced). sdp/sdpplus/fnn restart the surgery "
                             "stream after each tap; the official code restarts every n_blocks/4 blocks, the same for "
                             "the published taps 3 6 9 12")
    parser.add_argument("--object-name", default="object", help="fills {} in the prompts")
    parser.add_argument("--dbscan", choices=["mvtec", "visa"], default="mvtec",
                        help="data-set family of CLIP-AD's settings: DBSCAN of the text vectors (eps 0.5/15 or "
                             "1.5/25) and SDP+'s smoothing (sigma 8, or 2 on VisA); use the same for training and export")
    parser.add_argument("--clipad-mode", choices=CLIPAD_MODES,
                        help="sdp/sdpplus/fnn: official reproduces CLIP-AD's in-place tap aliasing and float16 text "
                             "vectors (default for sdp, sdpplus); clean takes block outputs and float32 (default for fnn)")
    parser.add_argument("-v", "--verbose", action="store_true")


def clip_spec_from_args(args: argparse.Namespace):
    """The ClipSpec the flags describe; the method's default tag applies only when no source is given."""
    from zsad_edge.export.clip_backbone import ClipSpec

    defaults = METHOD_DEFAULTS[args.method]
    explicit = [args.pretrained is not None, args.clip_checkpoint is not None, args.random_init]
    pretrained = args.pretrained if any(explicit) else defaults["pretrained"]
    return ClipSpec(args.arch or defaults["arch"], pretrained=pretrained, checkpoint=args.clip_checkpoint,
                    random_init=args.random_init, image_size=args.image_size or defaults["image_size"],
                    activation=args.activation)


def configure_logging(verbose: bool) -> None:
    """Library chatter (exporter, hub retries) only with -v; our own errors are printed as one line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    for noisy in ("onnx_ir", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore")
