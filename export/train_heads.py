"""Train APRIL-GAN or SDP+ linear heads: `python export/train_heads.py ...`, the same as
`python export/build_engines.py train-heads ...` (export/cli/train_heads.py)."""

import sys

from zsad_edge.export.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-heads", *sys.argv[1:]], prog="train_heads.py"))
