"""The offline demo: a tiny random-weight bundle and a synthetic part image, no downloads.

It proves the install end to end (open_clip, ONNX export, onnxruntime, overlays) in well under a
minute; its scores mean nothing because the weights are random.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from zsad_edge.runtime.image_io import write_image_atomic

from .build import BuildConfig
from .models.clip import ClipSpec

DEMO_ARCHITECTURE = "zsad-tiny-vit"


def demo_config(out_dir: Path, overwrite: bool) -> BuildConfig:
    """Tiny architecture, random CLIP and heads, 224 px."""
    return BuildConfig(
        clip=ClipSpec(DEMO_ARCHITECTURE, random_init=True, image_size=224),
        out_dir=out_dir,
        random_heads=True,
        overwrite=overwrite,
    )


def synthetic_part(path: Path, seed: int = 0) -> Path:
    """A brushed-metal plate with a dark scratch, 8-bit grayscale and non-square like a line scan."""
    rng = np.random.default_rng(seed)
    height, width = 256, 400
    texture = cv2.GaussianBlur(rng.normal(0.6, 0.08, (height, width)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.8)
    plate = np.clip(texture, 0, 1)
    cv2.line(plate, (120, 90), (260, 170), color=0.1, thickness=5)
    write_image_atomic(path, (plate * 255).astype(np.uint8))
    return path
