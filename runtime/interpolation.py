"""Bilinear upsampling with align_corners=True as two constant matrices (numpy, no torch).

APRIL-GAN upsamples patch-grid maps with align_corners=True. As matrices, X -> A_h @ X @ A_w^T is
the same interpolation, runs as plain GEMMs in numpy, onnxruntime and TensorRT, and one function
serves the runtime and the torch-side heads graph alike.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def align_corners_matrix(source: int, target: int) -> np.ndarray:
    """[target, source] float32 matrix M with M @ v == linear interpolation of v, align_corners=True.

    Cached (few-shot detection upsamples every frame with the same sizes) and read-only, so the
    cached array cannot be changed by a caller.
    """
    positions = np.arange(target, dtype=np.float64) * ((source - 1) / max(target - 1, 1))
    lower = np.minimum(np.floor(positions).astype(int), source - 1)
    upper = np.minimum(lower + 1, source - 1)
    fraction = positions - lower
    matrix = np.zeros((target, source))
    np.add.at(matrix, (np.arange(target), lower), 1 - fraction)
    np.add.at(matrix, (np.arange(target), upper), fraction)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def upsample_align_corners(grids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[B, g_h, g_w] -> [B, H, W]."""
    rows = align_corners_matrix(grids.shape[1], size[0])
    cols_t = align_corners_matrix(grids.shape[2], size[1]).T
    return rows @ grids.astype(np.float32) @ cols_t
