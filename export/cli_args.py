"""Command-line options shared by the torch-side tools (build_engines.py, train_heads.py).

Both name the CLIP model and the layers it is tapped at the same way, so a heads checkpoint
trained with one set of flags is exported with the same flags.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

# APRIL-GAN's published setting: ViT-L-14-336 (OpenAI weights) run at 518 px.
APRILGAN_DEFAULTS = {"arch": "ViT-L-14-336", "pretrained": "openai", "image_size": 518}


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """--arch, one weight source, --image-size, --taps, --object-name, -v."""
    weights = parser.add_argument_group("CLIP (one weight source)")
    weights.add_argument("--arch", default=APRILGAN_DEFAULTS["arch"], help="open_clip architecture name")
    weights.add_argument("--pretrained", default=None,
                         help=f"open_clip pretrained tag (default {APRILGAN_DEFAULTS['pretrained']} when no other source)")
    weights.add_argument("--clip-checkpoint", type=Path, help="local open_clip checkpoint (.pt/.bin/.safetensors)")
    weights.add_argument("--random-init", action="store_true", help="random CLIP weights (tests and timing only)")
    parser.add_argument("--image-size", type=int, default=APRILGAN_DEFAULTS["image_size"], help="input size in px")
    parser.add_argument("--taps", type=int, nargs="+", help="1-based block indices (default: 4 evenly spaced)")
    parser.add_argument("--object-name", default="object", help="fills {} in the prompts")
    parser.add_argument("-v", "--verbose", action="store_true")


def clip_spec_from_args(args: argparse.Namespace):
    """The ClipSpec the flags describe; the default tag applies only when no source is given."""
    from zsad_edge.export.clip_backbone import ClipSpec

    explicit = [args.pretrained is not None, args.clip_checkpoint is not None, args.random_init]
    pretrained = args.pretrained if any(explicit) else APRILGAN_DEFAULTS["pretrained"]
    return ClipSpec(args.arch, pretrained=pretrained, checkpoint=args.clip_checkpoint, random_init=args.random_init,
                    image_size=args.image_size)


def configure_logging(verbose: bool) -> None:
    """Library chatter (exporter, hub retries) only with -v; our own errors are printed as one line."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    for noisy in ("onnx_ir", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:
        warnings.filterwarnings("ignore")
