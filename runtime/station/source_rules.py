"""Per-source rules: a region of interest and the source's own thresholds.

A camera sees more than the part: fixtures, the conveyor, a label. The region of interest (a
polygon or a rectangle, in the source's pixels) says where the part is:
- the frame is cropped to the region's bounding box before the model (so the model's resolution
  is spent on the part), and inside that box the pixels outside the polygon are filled with the
  polygon's mean colour: whatever happens outside, the model sees the same input, so neither the
  map nor the score can react to it;
- the anomaly map outside the polygon is set to its lowest value inside, and the mask there is
  cleared, so no region is reported outside.
The map, the region boxes and the saved images are of the bounding box; the event's `roi` gives
its place in the frame as [x, y, width, height].

Thresholds: a source may have its own image threshold (the verdict) and map threshold (the mask),
where lighting or the part differ from camera to camera.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from ..errors import ZsadEdgeError
from ..pipeline import DetectionResult


@dataclass(frozen=True)
class RegionOfInterest:
    """A polygon in source pixels (a rectangle is a 4-point polygon)."""

    points: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, value: Any, where: str) -> "RegionOfInterest":
        """From [[x, y], ...] (3 points or more) or {x, y, width, height}."""
        if isinstance(value, dict):
            try:
                x, y, w, h = (int(value[key]) for key in ("x", "y", "width", "height"))
            except (KeyError, TypeError, ValueError):
                raise ZsadEdgeError(f"{where}: a rectangle needs integer x, y, width and height") from None
            if w <= 0 or h <= 0:
                raise ZsadEdgeError(f"{where}: a rectangle needs width and height > 0")
            points = ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
        else:
            try:
                points = tuple((int(px), int(py)) for px, py in value)
            except (TypeError, ValueError):
                raise ZsadEdgeError(f"{where}: a polygon is a list of [x, y] pixel pairs") from None
            if len(points) < 3:
                raise ZsadEdgeError(f"{where}: a polygon needs at least 3 points, got {len(points)}")
        if any(px < 0 or py < 0 for px, py in points):
            raise ZsadEdgeError(f"{where}: region points must be >= 0 (pixels of the frame)")
        return cls(points)

    def box(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """[x, y, width, height] of the bounding box, clipped to a frame of this shape."""
        xs, ys = [p[0] for p in self.points], [p[1] for p in self.points]
        x0, y0 = min(min(xs), shape[1] - 1), min(min(ys), shape[0] - 1)
        x1, y1 = min(max(xs), shape[1]), min(max(ys), shape[0])
        return x0, y0, max(1, x1 - x0), max(1, y1 - y0)

    def inside(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """bool [h, w]: the polygon's pixels within its bounding box."""
        x, y, w, h = box
        inside = np.zeros((h, w), np.uint8)
        cv2.fillPoly(inside, [np.array(self.points, np.int32) - (x, y)], 1)
        return inside.astype(bool)


@dataclass(frozen=True)
class SourceRules:
    """A source's region of interest and thresholds (None: the bundle's or the memory bank's)."""

    roi: RegionOfInterest | None = None
    image_threshold: float | None = None
    map_threshold: float | None = None

    def crop(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """The image the model sees, and the region's box in the frame (None without a region)."""
        if self.roi is None:
            return image, None
        box = self.roi.box(image.shape)
        x, y, w, h = box
        cropped = image[y : y + h, x : x + w].copy()
        inside = self.roi.inside(box)
        if inside.any() and not inside.all():
            cropped[~inside] = cropped[inside].mean(axis=0).astype(cropped.dtype)
        return cropped, box

    def judge(self, result: DetectionResult, box: tuple[int, int, int, int] | None) -> DetectionResult:
        """The result with the map and mask limited to the polygon and this source's thresholds."""
        anomaly_map, mask = result.anomaly_map, result.mask
        if self.map_threshold is not None:
            mask = anomaly_map > self.map_threshold
        if box is not None:
            inside = self.roi.inside(box)
            if inside.shape == anomaly_map.shape and inside.any():
                anomaly_map = np.where(inside, anomaly_map, anomaly_map[inside].min())
                mask = mask & inside
        verdict = result.is_anomalous if self.image_threshold is None else bool(result.score > self.image_threshold)
        return replace(result, anomaly_map=anomaly_map, mask=mask, is_anomalous=verdict)
