"""The anomalous regions of a mask: what an event lists and an overlay boxes."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

MAX_REGIONS = 16  # the largest regions are listed; `regions_total` counts them all


def anomalous_regions(mask: np.ndarray) -> tuple[list[dict[str, Any]], int]:
    """Connected regions of a mask (8-connected), largest first: [{box: [x, y, w, h], area: pixels}]."""
    if not mask.any():  # most frames of a healthy line: skip the labelling pass
        return [], 0
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:MAX_REGIONS] + 1
    regions = [
        {"box": [int(v) for v in stats[i, : cv2.CC_STAT_AREA]], "area": int(stats[i, cv2.CC_STAT_AREA])} for i in order
    ]
    return regions, count - 1
