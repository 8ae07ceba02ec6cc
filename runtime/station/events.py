"""What a station says about each frame: the event dict, and the append-only JSON-lines log of them.

An event carries what an operator or a MES needs without the images: verdict and score, map
statistics, the boxes and areas of the anomalous regions, per-stage latency, and the source's
drop counter at that moment. Each line is flushed as written, so a crash loses at most the line
being written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ZsadEdgeError
from ..pipeline import DetectionResult
from .sources import Frame

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


def frame_event(frame: Frame, result: DetectionResult, stages_ms: dict[str, float], dropped: int, done: float) -> dict:
    """The event of one processed frame; `done` is the wall-clock time its result was ready."""
    mask = result.refinement.mask if result.refinement is not None else result.mask
    regions, total = anomalous_regions(mask)
    summary = result.summary()
    del summary["height"], summary["width"]
    return {
        "event": "frame",
        "source": frame.source,
        "frame": frame.index,
        "origin": frame.origin,
        "captured_at": round(frame.captured_at, 6),
        "captured_monotonic": round(frame.captured_monotonic, 6),
        **summary,
        "regions": regions,
        "regions_total": total,
        "latency_ms": round((done - frame.captured_at) * 1e3, 3),
        "stages_ms": {stage: round(ms, 3) for stage, ms in stages_ms.items()},
        "source_dropped": dropped,
    }


class EventLog:
    """events.jsonl, opened for appending before any frame (an unwritable folder fails at once).

    only_anomalies: write frame events of anomalous frames only (status events always)."""

    def __init__(self, path: Path, only_anomalies: bool = False) -> None:
        self.path = Path(path)
        self.only_anomalies = only_anomalies
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
        except OSError as exc:
            raise ZsadEdgeError(f"cannot write events to {self.path}: {exc.strerror}") from None

    def write(self, event: dict) -> None:
        if self.only_anomalies and event["event"] == "frame" and not event["is_anomalous"]:
            return
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
