"""`train-heads`: APRIL-GAN or SDP+ linear heads on an MVTec-layout folder, for `build --heads-checkpoint`.

Both train one Linear(width -> embed_dim) per tap on the original CLIP path's patch tokens with
focal + dice per tap; they differ in CLIP, prompts/text vectors and schedule (aprilgan:
ViT-L-14-336 @ 518, lr 1e-3; sdpplus: ViT-B-16-plus-240 @ 240, DBSCAN text vectors, lr 1e-4,
5 epochs). The build refuses heads trained with another --method, CLIP (--arch, --activation),
--taps or --clipad-mode. --object-name and --dbscan may differ, and do in the published
cross-data-set setting (heads trained on one data set's objects and settings, used on another's).

Examples:
  python export/build_engines.py train-heads --method aprilgan --dataset /data/visa --out heads_visa.pth
  python export/build_engines.py --method aprilgan --heads-checkpoint heads_visa.pth --out bundles/mvtec
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad_edge.runtime.contract import METHODS
from zsad_edge.runtime.errors import ZsadEdgeError

from .arguments import add_clip_arguments, clip_spec_from_args, dataset_family

HELP = "train APRIL-GAN / SDP+ linear heads on an MVTec-layout folder"
TRAINABLE = tuple(spec.option for spec in METHODS.values() if spec.trained_heads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_clip_arguments(parser, TRAINABLE)
    parser.add_argument("--dataset", type=Path, required=True, help="MVTec-layout folder (one category or several)")
    parser.add_argument("--out", type=Path, required=True, help="heads checkpoint to write (.pth)")
    parser.add_argument("--epochs", type=int, help="default: aprilgan 3, sdpplus 5")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, help="default: aprilgan 1e-3, sdpplus 1e-4")
    parser.add_argument("--max-images", type=int, help="train on a random subset (CI-sized runs)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from zsad_edge.export.methods import export_method
    from zsad_edge.export.models.aprilgan import randomize_heads
    from zsad_edge.export.models.clip import default_taps, load_clip, validate_taps
    from zsad_edge.export.training import TrainConfig, load_training_data, save_heads_checkpoint, train_heads

    if not args.dataset.is_dir():
        raise ZsadEdgeError(f"--dataset {args.dataset} is not a folder: give an MVTec-layout data set")
    family = dataset_family(args)
    method = export_method(args.method)
    epochs, learning_rate = args.epochs or method.defaults["epochs"], args.lr or method.defaults["learning_rate"]
    spec = clip_spec_from_args(args)
    clip = load_clip(spec)
    taps = validate_taps(args.taps, clip.num_layers) if args.taps else default_taps(clip.num_layers)
    params = method.params(args.object_name, None, None, family, clipad_mode=args.clipad_mode)
    # The encoder the bundle will run: SDP+ heads learn on CLIP-AD's taps in the chosen mode.
    modules = method.assemble(clip, taps, method.text_features(clip, params), params)
    randomize_heads(modules.linear_heads, args.seed)
    data = load_training_data(args.dataset, clip.preprocess_spec(), args.max_images)
    print(f"training on {len(data)} image(s) from {args.dataset}; {len(data.skipped)} note(s)")
    for note in data.skipped:
        print(f"  {note}")
    config = TrainConfig(epochs=epochs, batch_size=args.batch_size, learning_rate=learning_rate, seed=args.seed)
    losses = train_heads(modules.encoder, modules.linear_heads, data, config)
    save_heads_checkpoint(
        modules.linear_heads,
        args.out,
        {
            "method": args.method,
            "architecture": spec.architecture,
            "weights": clip.weights_origin,
            "activation": clip.activation,
            "image_size": clip.input_size[0],
            "taps": taps,
            "object_name": args.object_name,
            "text": params,
            "dataset": str(args.dataset),
            "images": len(data),
            "epochs": epochs,
            "learning_rate": learning_rate,
            "epoch_losses": losses,
        },
    )
    print("epoch losses: " + ", ".join(f"{loss:.4f}" for loss in losses))
    print(f"heads written to {args.out}; export with --heads-checkpoint {args.out}")
    return 0
