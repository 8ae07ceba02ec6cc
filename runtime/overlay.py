"""Heatmap overlays for people: the anomaly map in colour over the image, the mask outlined."""

from __future__ import annotations

import cv2
import numpy as np

from .image_io import to_rgb_float


def render_overlay(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray, map_max: float,
                   alpha: float = 0.45, sam_mask: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB overlay at the image's size: heatmap, CLIP mask outlined white, SAM mask green.

    image: any layout the runtime reads. The colour scale is fixed to [0, map_max] (not per-image
    min-max) so that the same colour means the same score on every frame of a station.
    """
    base = (to_rgb_float(image) * 255).astype(np.uint8)
    scaled = np.clip(anomaly_map / max(map_max, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(base, 1.0 - alpha, heat, alpha, 0.0)
    thickness = max(1, min(image.shape[:2]) // 200)
    for outline, colour in ((mask, (255, 255, 255)), (sam_mask, (0, 255, 0))):
        if outline is not None:
            contours, _ = cv2.findContours(outline.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(blended, contours, -1, colour, thickness=thickness)
    return blended
