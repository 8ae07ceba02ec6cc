"""`demo`: offline, a tiny random-weight bundle and detection on a synthetic part, no downloads."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "offline demo: tiny random-weight bundle + detection on a synthetic part image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_bundle"), help="bundle folder (default demo_bundle)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle there")


def run(args: argparse.Namespace) -> int:
    from zsad_edge.export.build import build_bundle
    from zsad_edge.export.demo import demo_config, synthetic_part
    from zsad_edge.runtime.cli import run_detect

    built = build_bundle(demo_config(args.out, args.overwrite))
    print(f"demo bundle written to {built.path} (random weights: scores are meaningless)")
    output_dir = args.out.parent / f"{args.out.name}_output"
    sample = synthetic_part(output_dir / "synthetic_part.png")
    summary = run_detect(built.path, [str(sample)], output_dir)
    result = summary["results"][str(sample)]
    print(f"detected on {sample}: score {result['score']:.4f}, overlay in {output_dir}")
    print(f"next: zsad-edge detect {built.path} IMAGES_OR_FOLDERS --out results/")
    return 0
