"""Heatmap overlays for people: the anomaly map in colour over the image, the verdict written on it.

Colours are scaled so that the map threshold in use sits mid-scale: blue is normal, green-yellow
is at the threshold, red is well above it. With calibrated thresholds (bundle or memory bank)
the scale runs from the normal images' median pixel to as far above the threshold as that is
below it; uncalibrated, it spans the method's theoretical map range around the threshold. The
same colour therefore means the same thing on every frame of a station. The pixels above the
threshold are outlined white (SAM's outline, where refined, green), each anomalous region gets a
yellow box with its peak value, and a two-line header gives the verdict, score, image threshold
and where the thresholds come from, what the picture is (source, part or frame, time) and a
colour bar with its values. Text scales with the image; frames narrower than MIN_WIDTH are drawn
enlarged so that it stays readable.
"""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from .image_io import to_rgb_float
from .regions import anomalous_regions

WHITE, GREEN, YELLOW, LIGHT, DARK = (255, 255, 255), (0, 255, 0), (255, 220, 0), (210, 210, 210), (0, 0, 0)
RED, OK_GREEN = (200, 30, 30), (30, 130, 60)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_WIDTH = 640  # smaller frames are drawn enlarged, so the text stays readable


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


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour=WHITE, outline=False) -> int:
    """Draw text (outlined in black where it lies on the picture); returns its width in pixels."""
    thickness = max(1, round(scale * 1.6))
    if outline:
        cv2.putText(canvas, text, origin, FONT, scale, DARK, thickness + 2, cv2.LINE_AA)
    cv2.putText(canvas, text, origin, FONT, scale, colour, thickness, cv2.LINE_AA)
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def _header(width: int, lines: tuple[str, str], low: float, threshold: float, high: float, anomalous: bool):
    """Three rows on a dark strip: a verdict badge and the score; the stamp (source, part or frame,
    time); the colour scale from its low to its high value, the map threshold at its middle tick."""
    scale = width / 800
    row = cv2.getTextSize("Ag", FONT, scale, 1)[0][1] + round(16 * scale)
    pad = round(8 * scale)
    strip = np.full((3 * row + pad, width, 3), 32, np.uint8)
    badge = "ANOMALOUS" if anomalous else "NORMAL"
    badge_width = cv2.getTextSize(badge, FONT, scale, max(1, round(scale * 1.6)))[0][0] + 2 * pad
    cv2.rectangle(strip, (0, 0), (badge_width, row), RED if anomalous else OK_GREEN, thickness=-1)
    baseline = row - round(10 * scale)
    _text(strip, badge, (pad, baseline), scale)
    _text(strip, lines[0], (badge_width + pad, baseline), scale)
    _text(strip, lines[1], (pad, row + baseline), scale * 0.85, LIGHT)
    x = pad + _text(strip, f"map {low:.3g}", (pad, 2 * row + baseline), scale * 0.75, LIGHT) + pad
    bar_width = width // 3
    top = 2 * row + round(6 * scale)
    bar = _heat(np.tile(np.linspace(low, high, bar_width), (row - round(12 * scale), 1)), low, high)
    strip[top : top + bar.shape[0], x : x + bar_width] = bar
    middle = x + bar_width // 2
    cv2.line(strip, (middle, top - 2), (middle, top + bar.shape[0] + 1), WHITE, max(2, round(2 * scale)))
    label = f"{high:.3g}   (white tick: map threshold {threshold:.3g})"
    _text(strip, label, (x + bar_width + pad, 2 * row + baseline), scale * 0.75, LIGHT)
    return strip


def _boxes(canvas: np.ndarray, result, factor: float) -> None:
    """A box around each anomalous region with its peak map value beside it."""
    mask = result.refinement.mask if result.refinement is not None else result.mask
    regions, _ = anomalous_regions(mask)
    scale = canvas.shape[1] / 800
    for region in regions:
        bx, by, bw, bh = region["box"]
        peak = float(result.anomaly_map[by : by + bh, bx : bx + bw].max())
        gap = max(4, round(6 * scale))  # outside the region, so the threshold contour stays visible
        x, y = round(bx * factor) - gap, round(by * factor) - gap
        w, h = round(bw * factor) + 2 * gap, round(bh * factor) + 2 * gap
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), YELLOW, max(2, round(2 * scale)))
        label_y = y - round(6 * scale) if y > 24 * scale else y + h + round(20 * scale)
        _text(canvas, f"peak {peak:.3g}", (x, min(label_y, canvas.shape[0] - 4)), scale * 0.8, YELLOW, outline=True)


def render_overlay(
    image: np.ndarray,
    result,
    scoring: Mapping,
    thresholds: Mapping,
    alpha: float = 0.45,
    stamp: str = "",
) -> np.ndarray:
    """uint8 RGB, at least MIN_WIDTH wide: a two-line header (verdict, score and threshold; `stamp`:
    source, part or frame, time) over the image with the heatmap, the threshold contour (white),
    the refined mask's outline where a result stage refined it (CLIP-SAM, green), and a box with
    its peak value around each anomalous region.

    result: a DetectionResult; scoring: the detector's scoring in use; thresholds: its record
    (`calibrated`, `source`), for the header.
    """
    sam_mask = result.refinement.mask if result.refinement is not None else None
    low, high = colour_range(scoring)
    base = (to_rgb_float(image) * 255).astype(np.uint8)
    blended = cv2.addWeighted(base, 1.0 - alpha, _heat(result.anomaly_map, low, high), alpha, 0.0)
    factor = max(1.0, MIN_WIDTH / blended.shape[1])
    if factor > 1.0:  # text on a small frame would be unreadable: draw on an enlarged copy
        size = (round(blended.shape[1] * factor), round(blended.shape[0] * factor))
        blended = cv2.resize(blended, size, interpolation=cv2.INTER_LINEAR)
    thickness = max(2, blended.shape[1] // 320)
    for outline, colour in ((result.mask, WHITE), (sam_mask, GREEN)):
        if outline is not None:
            contours, _ = cv2.findContours(outline.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            contours = [np.round(c * factor).astype(np.int32) for c in contours]
            cv2.drawContours(blended, contours, -1, colour, thickness=thickness)
    _boxes(blended, result, factor)
    comparison = ">" if result.is_anomalous else "<="
    source = f"{'calibrated' if thresholds.get('calibrated') else 'UNCALIBRATED'}, {thresholds.get('source', 'bundle')}"
    text = f"score {result.score:.4g} {comparison} {float(scoring['image_threshold']):.4g} ({source})"
    header = _header(blended.shape[1], (text, stamp), low, float(scoring["map_threshold"]), high, result.is_anomalous)
    return np.vstack([header, blended])
