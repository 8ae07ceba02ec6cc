"""Build a zsad-edge engine bundle: CLIP image encoder with taps + heads as verified ONNX graphs.

Examples:
  python export/build_engines.py --demo
  python export/build_engines.py --arch ViT-L-14-336 --pretrained openai --image-size 518 \\
      --heads-checkpoint aprilgan_mvtec.pth --object-name "battery weld" --out bundles/weld
  python export/build_engines.py --arch ViT-B-16 --random-init --random-heads --image-size 224 --out bundles/vitb16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from zsad_edge.runtime.errors import ZsadEdgeError

from zsad_edge.export.cli_args import add_clip_arguments, clip_spec_from_args, configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help="offline: tiny random-weight bundle in --out (default demo_bundle) + detection on a synthetic image")
    parser.add_argument("--method", choices=["aprilgan"], default="aprilgan", help="anomaly method (APRIL-GAN zero-shot)")
    add_clip_arguments(parser)
    heads = parser.add_mutually_exclusive_group()
    heads.add_argument("--heads-checkpoint", type=Path, help="trained APRIL-GAN linear heads")
    heads.add_argument("--random-heads", action="store_true", help="random heads (tests and timing only)")
    parser.add_argument("--out", type=Path, help="bundle folder to write (atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    parser.add_argument("--parity-tolerance", type=float, default=1e-4,
                        help="max error of each graph vs PyTorch, relative to the output range")
    return parser


def _config_from_args(args: argparse.Namespace):
    from zsad_edge.export.build import BuildConfig

    if args.out is None:
        raise ZsadEdgeError("--out DIR is required (the bundle folder to write)")
    return BuildConfig(
        clip=clip_spec_from_args(args),
        out_dir=args.out,
        object_name=args.object_name,
        taps=args.taps,
        heads_checkpoint=args.heads_checkpoint,
        random_heads=args.random_heads,
        parity_tolerance=args.parity_tolerance,
        overwrite=args.overwrite,
    )


def _run_demo(out_dir: Path, overwrite: bool) -> int:
    from zsad_edge.export.build import build_aprilgan_bundle
    from zsad_edge.export.demo import demo_config, synthetic_part
    from zsad_edge.runtime.cli import run_detect

    built = build_aprilgan_bundle(demo_config(out_dir, overwrite))
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
    configure_logging(args.verbose)
    try:
        if args.demo:
            return _run_demo(args.out or Path("demo_bundle"), overwrite=True)
        from zsad_edge.export.build import build_aprilgan_bundle

        built = build_aprilgan_bundle(_config_from_args(args))
    except ZsadEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    worst = max(r for p in built.manifest.parity.values() for r in p["relative_error"].values())
    print(f"bundle written to {built.path} (worst graph-vs-PyTorch relative error {worst:.2e})")
    if built.manifest.clip["weights"]["kind"] == "random" or built.manifest.method["params"]["heads"]["kind"] == "random":
        print("note: this bundle has random weights: for tests and timing only, never for inspection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
