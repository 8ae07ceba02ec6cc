"""Gaussian smoothing of anomaly maps, done after the graph (CLIP-AD smooths with sigma 8 at 240 px).

It matches scipy.ndimage.gaussian_filter, which the published code and our PyTorch reference use:
mirror border including the edge pixel (scipy 'reflect' = OpenCV BORDER_REFLECT) and a kernel
truncated at 4 sigma (radius int(4 sigma + 0.5)). Kept out of the graph because a 65-tap kernel
is a poor fit for the ONNX/TensorRT convolution path and a cheap separable filter in OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np

TRUNCATE_SIGMAS = 4.0


def gaussian_smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth each map of [B, H, W] (float32) with a Gaussian of `sigma` pixels; sigma 0 returns maps."""
    if sigma <= 0:
        return maps
    radius = int(TRUNCATE_SIGMAS * sigma + 0.5)
    kernel = cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_64F).astype(np.float32)
    return np.stack(
        [
            cv2.sepFilter2D(
                np.ascontiguousarray(m, dtype=np.float32), cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REFLECT
            )
            for m in maps
        ]
    )
