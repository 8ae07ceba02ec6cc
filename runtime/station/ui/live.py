"""What the operator page shows, kept in memory: per source the latest drawn frame and running
numbers, and a ring of the latest anomalies with their pictures.

A sink like the others, with one difference in what it keeps: a page wants the newest picture,
not every picture. `__call__` runs on the station's last thread and only takes notes (counters, a
reference to the frame). Drawing the overlay and encoding JPEGs happen on this view's own
low-priority thread, at most `fps` pictures per source per second for its tile and as many for
its anomalies. Frames in between are not drawn (counted `not_drawn`); when the thread falls
behind, the oldest waiting picture is dropped (counted `dropped`, as are those still waiting at
the stop), so every frame is counted once: written + not_drawn + dropped. Every anomaly enters
the list at once; its picture follows when drawn, or comes from the station's saved images
(--save) when it was not. The page's server reads only this memory, so a page load never waits
for the disk or the model.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import cv2
import numpy as np

from ...pipeline import DetectionResult
from ..sinks import Painter, lower_priority
from ..sources import Frame

TILE_WIDTH = 960  # a tile's picture is at most this wide: enough for a tablet, small to send
THUMB_WIDTH = 160
JPEG_QUALITY = 80
RECENT = 200  # frames per source behind the fps and latency figures


@dataclass
class Anomaly:
    """One anomalous frame in the list: what its event says, and its pictures once drawn."""

    id: int
    source: str
    frame: int
    run: str
    time: float
    score: float
    image_threshold: float
    part_id: str | None
    overlay: bytes | None = None  # JPEG, full size
    thumbnail: bytes | None = None  # JPEG
    mask: bytes | None = None  # PNG

    def listing(self) -> dict:
        return {
            "id": self.id, "source": self.source, "frame": self.frame, "run": self.run, "time": self.time,
            "score": self.score, "image_threshold": self.image_threshold, "part_id": self.part_id,
            "drawn": self.overlay is not None,
        }  # fmt: skip


@dataclass
class Tile:
    """One source's latest picture and figures."""

    picture: bytes | None = None  # JPEG of the latest drawn frame
    drawn: int = 0  # pictures drawn so far: the page fetches a new one when this changes
    last: dict | None = None  # the latest frame's verdict, score and thresholds
    finished: deque = field(default_factory=lambda: deque(maxlen=RECENT))  # (monotonic time, latency ms)
    last_drawn: float = -float("inf")  # when a frame of it was last taken to be drawn
    last_anomaly_drawn: float = -float("inf")

    def figures(self) -> dict:
        items = list(self.finished)
        if len(items) >= 2 and items[-1][0] > items[0][0]:
            fps = (len(items) - 1) / (items[-1][0] - items[0][0])
        else:
            fps = 0.0
        latency = np.asarray([ms for _, ms in items]) if items else np.zeros(1)
        return {
            "fps": round(fps, 2),
            "latency_ms": {"p50": round(float(np.percentile(latency, 50)), 1),
                           "p95": round(float(np.percentile(latency, 95)), 1)},
            "drawn": self.drawn,
            "last": self.last,
        }  # fmt: skip


class LiveView:
    """The page's memory of a running station (a station sink); `snapshot`, `picture` and
    `anomaly` are read by the page's server on its own thread."""

    kind = "ui"

    def __init__(
        self,
        sources: Sequence[str],
        scoring: Mapping,
        thresholds: Mapping,
        fps: float = 4.0,
        keep: int = 50,
        pending: int = 8,
    ) -> None:
        if fps <= 0 or keep < 1:
            raise ValueError("the page's frame rate must be > 0 and it must keep at least one anomaly")
        self.painter = Painter(scoring, thresholds)
        self.interval_s = 1.0 / fps
        self.tiles = {name: Tile() for name in sources}
        self.anomalies: deque[Anomaly] = deque(maxlen=keep)
        self.written = self.not_drawn = self.dropped = 0  # pictures drawn, frames not drawn, dropped
        self._next_id = 1
        self._pending: deque[tuple[Frame, DetectionResult, dict, Anomaly | None]] = deque()
        self._pending_size = max(pending, 2 * len(self.tiles))
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sink-ui", daemon=True)
        self._thread.start()

    def __call__(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        now = time.monotonic()
        anomalous = bool(event["is_anomalous"])
        with self._wake:
            tile = self.tiles[frame.source]
            tile.finished.append((now, event["latency_ms"]))
            scoring, thresholds = self.painter.model_of(event)
            threshold = scoring["image_threshold"]
            tile.last = {
                "frame": event["frame"], "score": event["score"], "image_threshold": threshold,
                "thresholds_from": thresholds.get("source", "bundle"),
                "anomalous": anomalous, "time": event["captured_at"], "part_id": event.get("part_id"),
            }  # fmt: skip
            entry = self._list(frame, event, threshold) if anomalous else None
            # a picture per interval for the tile, and one per interval for the anomalies' list
            draw_anomaly = entry is not None and now - tile.last_anomaly_drawn >= self.interval_s
            if not draw_anomaly and now - tile.last_drawn < self.interval_s:
                self.not_drawn += 1
                return
            tile.last_drawn = now
            if draw_anomaly:
                tile.last_anomaly_drawn = now
            if len(self._pending) >= self._pending_size:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((frame, result, event, entry if draw_anomaly else None))
            self._wake.notify()

    def _list(self, frame: Frame, event: dict, threshold: float) -> Anomaly:
        entry = Anomaly(
            self._next_id, frame.source, event["frame"], event.get("run", ""), event["captured_at"],
            event["score"], threshold, event.get("part_id"),
        )  # fmt: skip
        self._next_id += 1
        self.anomalies.append(entry)
        return entry

    def use_model(self, scoring: Mapping, record: Mapping) -> None:
        self.painter.use_model(scoring, record)

    def snapshot(self) -> dict:
        """Per source its figures, the anomalies listed (newest first) and the view's own counts."""
        with self._wake:
            return {
                "tiles": {name: tile.figures() for name, tile in self.tiles.items()},
                "anomalies": [entry.listing() for entry in reversed(self.anomalies)],
                "counts": self.counts(),
            }

    def picture(self, source: str) -> bytes | None:
        with self._wake:
            tile = self.tiles.get(source)
            return tile.picture if tile else None

    def anomaly(self, anomaly_id: int) -> Anomaly | None:
        with self._wake:
            return next((entry for entry in self.anomalies if entry.id == anomaly_id), None)

    def counts(self) -> dict:
        return {"written": self.written, "not_drawn": self.not_drawn, "dropped": self.dropped}

    def state(self) -> dict:
        return {}

    def begin_close(self, deadline: float | None = None) -> None:
        with self._wake:
            self._closing = True
            self.dropped += len(self._pending)  # pictures for a page that is going away: not drawn
            self._pending.clear()
            self._wake.notify()

    def close(self, deadline: float | None = None) -> None:
        self.begin_close(deadline)
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        lower_priority()
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                frame, result, event, entry = self._pending.popleft()
            self._draw(frame, result, event, entry)

    def _draw(self, frame: Frame, result: DetectionResult, event: dict, entry: Anomaly | None) -> None:
        overlay = cv2.cvtColor(self.painter.overlay(frame, result, event), cv2.COLOR_RGB2BGR)
        picture = _jpeg(_narrowed(overlay, TILE_WIDTH))
        if entry is not None:
            mask = result.refinement.mask if result.refinement is not None else result.mask
            pictures = (_jpeg(overlay), _jpeg(_narrowed(overlay, THUMB_WIDTH)), _png(mask.astype(np.uint8) * 255))
        with self._wake:  # one thread draws, in the order frames came: the latest drawn is the newest
            tile = self.tiles[frame.source]
            tile.picture = picture
            tile.drawn += 1
            if entry is not None:
                entry.overlay, entry.thumbnail, entry.mask = pictures
            self.written += 1


def _narrowed(image: np.ndarray, width: int) -> np.ndarray:
    if image.shape[1] <= width:
        return image
    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _jpeg(bgr: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("the frame could not be encoded as JPEG")
    return data.tobytes()


def _png(gray: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", gray)
    if not ok:
        raise ValueError("the mask could not be encoded as PNG")
    return data.tobytes()
