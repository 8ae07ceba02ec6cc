"""Train APRIL-GAN or SDP+ linear heads on an MVTec-layout folder; the checkpoint feeds build_engines.py.

Both methods train one Linear(width -> embed_dim) per tap on the original CLIP path's patch tokens
with focal + dice per tap; they differ in CLIP, prompts/text vectors and schedule (aprilgan:
ViT-L-14-336 @ 518, lr 1e-3; sdpplus: ViT-B-16-plus-240 @ 240, DBSCAN text vectors, lr 1e-4,
5 epochs).

Examples:
  python export/train_heads.py --method aprilgan --dataset /data/visa --out heads_visa.pth
  python export/build_engines.py --method aprilgan --heads-checkpoint heads_visa.pth --out bundles/mvtec
  python export/train_heads.py --method sdpplus --dataset /data/visa --out sdpplus_visa.pth
Use the same --method, CLIP flags (incl. --activation), --taps, --object-name, --dbscan and
--clipad-mode for both commands; the build refuses heads trained with another activation or mode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from zsad_edge.export.cli_args import add_clip_arguments, clip_spec_from_args, configure_logging
from zsad_edge.export.defaults import METHOD_DEFAULTS
from zsad_edge.runtime.errors import ZsadEdgeError

TRAINABLE = ("aprilgan", "sdpplus")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_clip_arguments(parser, TRAINABLE)
    parser.add_argument("--dataset", type=Path, required=True, help="MVTec-layout folder (one category or several)")
    parser.add_argument("--out", type=Path, required=True, help="heads checkpoint to write (.pth)")
    parser.add_argument("--epochs", type=int, help="default: aprilgan 3, sdpplus 5")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, help="default: aprilgan 1e-3, sdpplus 1e-4")
    parser.add_argument("--max-images", type=int, help="train on a random subset (CI-sized runs)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        from zsad_edge.export.aprilgan import randomize_heads
        from zsad_edge.export.clip_backbone import default_taps, load_clip, validate_taps
        from zsad_edge.export.methods import assemble, method_params, text_features
        from zsad_edge.export.training import TrainConfig, load_training_data, save_heads_checkpoint, train_heads

        defaults = METHOD_DEFAULTS[args.method]
        epochs, learning_rate = args.epochs or defaults["epochs"], args.lr or defaults["learning_rate"]
        clip = load_clip(clip_spec_from_args(args))
        taps = validate_taps(args.taps, clip.num_layers) if args.taps else default_taps(clip.num_layers)
        params = method_params(args.method, args.object_name, None, None, args.dbscan, clipad=args.clipad_mode)
        text = text_features(args.method, clip, params)
        # The encoder the bundle will run: SDP+ heads learn on CLIP-AD's taps in the chosen mode.
        modules = assemble(args.method, clip, taps, text, params)
        randomize_heads(modules.linear_heads, args.seed)
        data = load_training_data(args.dataset, clip.preprocess_spec(), args.max_images)
        print(f"training on {len(data)} image(s) from {args.dataset}; {len(data.skipped)} note(s)")
        for note in data.skipped:
            print(f"  {note}")
        config = TrainConfig(epochs=epochs, batch_size=args.batch_size, learning_rate=learning_rate, seed=args.seed)
        losses = train_heads(modules.encoder, modules.linear_heads, data, config)
        save_heads_checkpoint(modules.linear_heads, args.out, {
            "method": args.method, "architecture": clip_spec_from_args(args).architecture,
            "weights": clip.weights_origin, "activation": clip.activation, "image_size": clip.input_size[0], "taps": taps,
            "object_name": args.object_name, "text": params, "dataset": str(args.dataset), "images": len(data),
            "epochs": epochs, "learning_rate": learning_rate, "epoch_losses": losses,
        })
    except ZsadEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("epoch losses: " + ", ".join(f"{loss:.4f}" for loss in losses))
    print(f"heads written to {args.out}; export with --heads-checkpoint {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
