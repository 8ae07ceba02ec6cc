"""Heatmap overlays for people: the anomaly map in colour over the image, the verdict written on it.

Colours are scaled so that the map threshold in use sits mid-scale: blue is normal, green-yellow
is at the threshold, red is well above it. With calibrated thresholds (bundle or memory bank)
the scale runs from the normal images' median pixel to as far above the threshold as that is
below it; uncalibrated, it spans the method's theoretical map range around the threshold. The
same colour therefore means the same thing on every frame of a station. The pixels above the
threshold are outlined white (SAM's outline, where refined, green), and a header line gives
score, verdict, image threshold and where the thresholds come from, with a small colour bar.
"""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from .image_io import to_rgb_float

WHITE, GREEN = (255, 255, 255), (0, 255, 0)


def colour_range(scoring: Mapping) -> tuple[float, float]:
    """(low, high) of the colour scale, with the map threshold in the middle."""
    threshold = float(scoring["map_threshold"])
    if "map_normal_median" in scoring:  # calibrated: distance from typical normal to the threshold
        half = threshold - float(scoring["map_normal_median"])
    else:  # uncalibrated: up to the top of the method's map range
        top = max(float(scoring.get("map_max", threshold)), float(scoring.get("map_max_range", [threshold] * 2)[1]))
        half = top - threshold
    half = max(half, 1e-6)
    return threshold - half, threshold + half


def _heat(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = np.clip((anomaly_map - low) / (high - low), 0.0, 1.0)
    return cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _header(width: int, text: str, low: float, threshold: float, high: float, anomalous: bool) -> np.ndarray:
    """A strip with the verdict line on the left and a colour bar (low, threshold, high) on the right."""
    scale = max(0.35, min(width / 900, 1.0))
    height = int(44 * scale) + 8
    strip = np.full((height, width, 3), 32, np.uint8)
    colour = (255, 80, 80) if anomalous else (120, 220, 120)
    cv2.putText(strip, text, (6, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, 1, cv2.LINE_AA)
    bar_width = max(60, width // 4)
    left = width - bar_width - 8
    if left > width // 2:
        bar = _heat(np.tile(np.linspace(low, high, bar_width), (int(10 * scale) + 2, 1)), low, high)
        top = 4
        strip[top : top + bar.shape[0], left : left + bar_width] = bar
        for value, x in ((low, left), (threshold, left + bar_width // 2), (high, left + bar_width - 1)):
            cv2.line(strip, (x, top), (x, top + bar.shape[0] + 2), WHITE, 1)
            label = f"{value:.3g}"
            size = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.35 * scale, 1)[0]
            position = (min(max(x - size[0] // 2, left), width - size[0] - 2), height - 4)
            cv2.putText(strip, label, position, cv2.FONT_HERSHEY_SIMPLEX, 0.35 * scale, WHITE, 1, cv2.LINE_AA)
    return strip


def render_overlay(
    image: np.ndarray,
    result,
    scoring: Mapping,
    thresholds: Mapping,
    alpha: float = 0.45,
) -> np.ndarray:
    """uint8 RGB: a header line over the image with the heatmap, the threshold contour and, where a
    result stage refined the result (CLIP-SAM), the refined mask's outline.

    result: a DetectionResult; scoring: the detector's scoring in use; thresholds: its record
    (`calibrated`, `source`), for the header.
    """
    sam_mask = result.refinement.mask if result.refinement is not None else None
    low, high = colour_range(scoring)
    base = (to_rgb_float(image) * 255).astype(np.uint8)
    blended = cv2.addWeighted(base, 1.0 - alpha, _heat(result.anomaly_map, low, high), alpha, 0.0)
    thickness = max(1, min(image.shape[:2]) // 200)
    for outline, colour in ((result.mask, WHITE), (sam_mask, GREEN)):
        if outline is not None:
            contours, _ = cv2.findContours(outline.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(blended, contours, -1, colour, thickness=thickness)
    verdict = "ANOMALOUS" if result.is_anomalous else "normal"
    comparison = ">" if result.is_anomalous else "<="
    source = f"{'calibrated' if thresholds.get('calibrated') else 'UNCALIBRATED'}, {thresholds.get('source', 'bundle')}"
    text = f"{verdict}: score {result.score:.4g} {comparison} {float(scoring['image_threshold']):.4g} ({source})"
    header = _header(blended.shape[1], text, low, float(scoring["map_threshold"]), high, result.is_anomalous)
    return np.vstack([header, blended])
