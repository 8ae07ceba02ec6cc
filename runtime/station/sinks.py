"""Sinks for what a station finds, each on its own thread behind a bounded queue.

A sink must never slow the line: when it falls behind (a slow disk, a broker or web server that
is down), its oldest pending item is dropped and counted, and inference goes on. A per-source
rate limit keeps a burst of anomalies from flooding a disk or a message bus; what it holds back
is counted too. A failed write is counted and logged once, never fatal. `close` handles what is
still queued, then finalises (videos are closed so they play).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Callable, Mapping

import cv2
import numpy as np

from ..image_io import write_image_atomic
from ..overlay import render_overlay
from ..pipeline import DetectionResult
from .sources import Frame

log = logging.getLogger(__name__)
SAVE_CHOICES = ("anomalies", "all", "none")
DEFAULT_VIDEO_FPS = 10.0  # a source without a stated rate that ended before its rate could be measured
RATE_PROBE_FRAMES = 10


SINK_NICENESS = 10


def lower_priority() -> None:
    """Run the calling thread at a lower scheduling priority (Linux: per-thread niceness), so on a
    CPU the model saturates, the sinks take the idle time and drop (counted) rather than slow the
    line. Elsewhere, or where not permitted, it stays as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SINK_NICENESS)
    except (AttributeError, OSError):
        pass


class RateLimit:
    """At most `per_s` items per second per source (None: no limit), as a token bucket holding up to
    one second's worth: a batch of frames that arrive together is not cut to one, yet over any
    span T no more than per_s * (T + 1) items pass."""

    def __init__(self, per_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        if per_s is not None and per_s <= 0:
            raise ValueError("a rate limit must be > 0 per second")
        self.per_s, self.clock = per_s, clock
        self.capacity = max(1.0, per_s or 0.0)
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, when counted)

    def allow(self, source: str) -> bool:
        if self.per_s is None:
            return True
        now = self.clock()
        tokens, then = self._buckets.get(source, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.per_s)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


class QueuedSink(ABC):
    """A sink with its own thread: `__call__` picks and queues (never blocks), `handle` does the work.

    only_anomalies: take anomalous frames only; rate_per_s: the per-source rate limit.
    """

    kind = "sink"

    def __init__(self, queue_size: int = 32, rate_per_s: float | None = None, only_anomalies: bool = True) -> None:
        self.only_anomalies = only_anomalies
        self.written = self.dropped = self.rate_limited = self.failed = 0
        self.last_error: str | None = None
        self._rate = RateLimit(rate_per_s)
        self._queue: deque[tuple[Frame, DetectionResult, dict]] = deque()
        self._size = queue_size
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.kind}", daemon=True)
        self._thread.start()

    def __call__(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        if self.only_anomalies and not event["is_anomalous"]:
            return
        if not self._rate.allow(frame.source):
            self.rate_limited += 1
            return
        with self._wake:
            if len(self._queue) >= self._size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((frame, result, event))
            self._wake.notify()

    @abstractmethod
    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        """Write or send one item (on the sink's thread); raise OSError or ConnectionError on failure."""

    def finish(self) -> None:
        """After the last item: release files and connections."""

    def close(self) -> None:
        """Handle what is queued, stop the thread, finalise."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        self.finish()

    def counts(self) -> dict:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "rate_limited": self.rate_limited,
            "failed": self.failed,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        lower_priority()
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
            try:
                self.handle(*item)
                self.written += 1
            except (OSError, ConnectionError, ValueError) as exc:
                self.failed += 1
                if self.last_error is None:
                    log.warning("%s sink: %s (counted; the station goes on)", self.kind, exc)
                self.last_error = str(exc)


class FrameImageSink(QueuedSink):
    """OUT/<source>/<frame>_frame.png, _overlay.png and _mask.png (the final mask: the refined one
    where CLIP-SAM refined it). Rendering happens here, off the inference path."""

    kind = "images"

    def __init__(self, folder: Path, scoring: Mapping, thresholds: Mapping, save: str = "anomalies", **options) -> None:
        if save not in SAVE_CHOICES[:2]:
            raise ValueError(f"save must be one of {SAVE_CHOICES[:2]}, got {save!r}")
        self.folder, self.scoring, self.thresholds = Path(folder), scoring, thresholds
        super().__init__(only_anomalies=save == "anomalies", **options)

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        base = self.folder / frame.source / f"{frame.index:08d}"
        mask = result.refinement.mask if result.refinement is not None else result.mask
        write_image_atomic(base.with_name(f"{base.name}_frame.png"), frame.image)
        write_image_atomic(base.with_name(f"{base.name}_overlay.png"), self._overlay(frame, result))
        write_image_atomic(base.with_name(f"{base.name}_mask.png"), mask.astype(np.uint8) * 255)

    def _overlay(self, frame: Frame, result: DetectionResult) -> np.ndarray:
        return render_overlay(frame.image, result, self.scoring, self.thresholds)


class VideoSink(FrameImageSink):
    """OUT/<source>.mp4 per source: every frame's overlay (heatmap, contour, verdict header). Closed
    on stop, so it plays after a signal too.

    Frame rate: the source's own where it states one (video files); otherwise the rate at which the
    source's frames reach the sink, measured over its first RATE_PROBE_FRAMES frames (held back
    until then), so a camera thinned by drops or --max-fps still plays back in real time.
    """

    kind = "video"

    def __init__(self, folder: Path, scoring: Mapping, thresholds: Mapping, fps: Mapping[str, float | None], **options):
        self.fps = fps
        self._writers: dict[str, tuple[cv2.VideoWriter, tuple[int, int]]] = {}
        self._probing: dict[str, list[tuple[float, np.ndarray]]] = {}
        super().__init__(folder, scoring, thresholds, save="all", **options)

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        overlay = self._overlay(frame, result)
        if frame.source in self._writers:
            self._write(frame.source, overlay)
            return
        probe = self._probing.setdefault(frame.source, [])
        probe.append((frame.captured_monotonic, overlay))
        if self.fps.get(frame.source) or len(probe) >= RATE_PROBE_FRAMES:
            self._start(frame.source)

    def _start(self, source: str) -> None:
        """Open the source's video at its rate and write the frames held back while measuring it."""
        probe = self._probing.pop(source)
        fps = self.fps.get(source) or measured_rate([when for when, _ in probe])
        height, width = probe[0][1].shape[:2]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{source}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise OSError(f"cannot write video {path} (this OpenCV build lacks an mp4v encoder?)")
        self._writers[source] = (writer, (width, height))
        for _, overlay in probe:
            self._write(source, overlay)

    def _write(self, source: str, overlay: np.ndarray) -> None:
        writer, size = self._writers[source]
        if (overlay.shape[1], overlay.shape[0]) != size:  # a source whose frame size changed
            overlay = cv2.resize(overlay, size, interpolation=cv2.INTER_AREA)
        writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))

    def finish(self) -> None:
        for source in list(self._probing):  # sources that ended before their rate was measured
            self._start(source)
        for writer, _ in self._writers.values():
            writer.release()
        self._writers.clear()


def measured_rate(times: list[float]) -> float:
    """Frames per second from monotonic capture times, within [1, 120]; DEFAULT_VIDEO_FPS from fewer
    than two frames."""
    if len(times) < 2 or times[-1] <= times[0]:
        return DEFAULT_VIDEO_FPS
    return min(120.0, max(1.0, (len(times) - 1) / (times[-1] - times[0])))
