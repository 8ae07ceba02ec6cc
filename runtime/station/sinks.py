"""Sinks for what a station finds, each on its own thread behind a bounded queue.

A sink must never slow the line: when it falls behind (a slow disk, a broker or web server that
is down), its oldest pending item is dropped and counted, and inference goes on. A per-source
rate limit keeps a burst of anomalies from flooding a disk or a message bus; what it holds back
is counted too. A failed write is counted and logged once, never fatal. Images and videos stop
(counted) while the disk has less free room than the guard asks, so the event log keeps the
rest. `close_sinks` handles what is still queued within one time budget for all sinks (a stop
must fit in systemd's 90 s), then finalises (videos are closed so they play).

Files are named by run id, so two runs into one folder never overwrite each other's evidence:
OUT/frames/SOURCE/RUN/FRAME_{frame,overlay,mask}.png and OUT/video/SOURCE/RUN-NNNN.mp4.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence

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
DEFAULT_SEGMENT_S = 300.0  # a video file per 5 minutes per source: a crash loses at most the open one
DEFAULT_DRAIN_S = 30.0  # all sinks together, on stop: well inside systemd's default 90 s


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


class DiskLow(Exception):
    """Raised by a file sink instead of writing while the disk's free room is below the guard."""


class DiskGuard:
    """Free room on the disk of a folder, looked at most once a second (a statvfs per image would
    be wasted on a healthy disk): `low()` while below `min_free_bytes`."""

    def __init__(self, folder: Path, min_free_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder, self.min_free_bytes, self.clock = Path(folder), min_free_bytes, clock
        self._checked = (-float("inf"), False)

    def low(self) -> bool:
        now = self.clock()
        if now - self._checked[0] >= 1.0:
            folder = self.folder
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            self._checked = (now, shutil.disk_usage(folder).free < self.min_free_bytes)
        return self._checked[1]


def close_sinks(sinks: Sequence["QueuedSink"], drain_s: float | None = DEFAULT_DRAIN_S) -> None:
    """Close every sink within one budget of `drain_s` seconds for all of them together (None: no
    limit): they drain side by side, not one after another."""
    deadline = None if drain_s is None else time.monotonic() + drain_s
    for sink in sinks:
        sink.begin_close(deadline)
    for sink in sinks:
        sink.close(deadline)


class Connection:
    """The connection state of a sink that talks to another system (a broker, a web server, a PLC):
    a change is logged once and reported as a `sink_down` / `sink_up` event through `report`
    (the station sets it), and /healthz and the metrics read `connected`."""

    def __init__(self, kind: str, target: str) -> None:
        self.kind, self.target = kind, target
        self.connected = True
        self.report: Callable[[dict], None] | None = None

    def up(self) -> None:
        self._set(True, None)

    def down(self, reason: str) -> None:
        self._set(False, reason)

    def _set(self, connected: bool, reason: str | None) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        if connected:
            log.warning("%s sink: %s is reachable again", self.kind, self.target)
        else:
            log.warning("%s sink: %s is unreachable (%s)", self.kind, self.target, reason)
        if self.report is not None:
            kind = "sink_up" if connected else "sink_down"
            self.report({"event": kind, "sink": self.kind, "time": round(time.time(), 6), "reason": reason})


class QueuedSink(ABC):
    """A sink with its own thread: `__call__` picks and queues (never blocks), `handle` does the work.

    only_anomalies: take anomalous frames only; rate_per_s: the per-source rate limit.
    """

    kind = "sink"

    def __init__(self, queue_size: int = 32, rate_per_s: float | None = None, only_anomalies: bool = True) -> None:
        self.only_anomalies = only_anomalies
        self.written = self.dropped = self.rate_limited = self.failed = self.abandoned = 0
        self.last_error: str | None = None
        self.deadline: float | None = None  # set on close: work must end by then
        self._rate = RateLimit(rate_per_s)
        self._queue: deque[tuple[Frame, DetectionResult, dict]] = deque()
        self._size = queue_size
        self._wake = threading.Condition()
        self._closing = self._abandon = False
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.kind}", daemon=True)
        self._thread.start()

    def __call__(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        if self.only_anomalies and not event["is_anomalous"]:
            return
        if not self._rate.allow(frame.source):
            self.rate_limited += 1
            return
        self.take(frame, result, event)

    def take(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        """Queue an item for the sink's thread (the oldest is dropped, counted, when the queue is full)."""
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

    def begin_close(self, deadline: float | None = None) -> None:
        """No more items come; handle the queued ones until `deadline` (monotonic; None: all of them)."""
        with self._wake:
            self._closing, self.deadline = True, deadline
            self._wake.notify()

    def close(self, deadline: float | None = None) -> None:
        """Handle what is queued (until `deadline`; what is left then is `left_behind`), stop, finalise."""
        self.begin_close(deadline if self.deadline is None else self.deadline)
        self._thread.join(None if self.deadline is None else max(0.0, self.deadline - time.monotonic()))
        with self._wake:
            self._abandon = True
            left, self._queue = list(self._queue), deque()
            self._wake.notify()
        if left:
            self.left_behind(left)
        if self._thread.is_alive():  # stuck in one item past the deadline: leave it, finalise nothing it uses
            log.warning("%s sink: still busy at the end of the drain time; left as it was", self.kind)
            return
        self.finish()

    def left_behind(self, items: list[tuple[Frame, DetectionResult, dict]]) -> None:
        """Items still queued when the drain time ran out: counted as abandoned (sinks that can keep
        them for later, in a spool, do so)."""
        self.abandoned += len(items)

    def remaining_s(self, cap: float) -> float:
        """How long one blocking step may take: `cap`, or less once a drain deadline is set."""
        if self.deadline is None:
            return cap
        return max(0.05, min(cap, self.deadline - time.monotonic()))

    def counts(self) -> dict:
        return {
            "written": self.written,
            "dropped": self.dropped,
            "rate_limited": self.rate_limited,
            "failed": self.failed,
            "abandoned": self.abandoned,
            "last_error": self.last_error,
        }

    def state(self) -> dict:
        """What health and metrics show; sinks with a connection add `connected`."""
        return {}

    def _run(self) -> None:
        lower_priority()
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if self._abandon or not self._queue:
                    return
                item = self._queue.popleft()
            try:
                self.handle(*item)
                self.written += 1
            except DiskLow:
                self.disk_skipped += 1
            except (OSError, ConnectionError, ValueError) as exc:
                self.failed += 1
                if self.last_error is None:
                    log.warning("%s sink: %s (counted; the station goes on)", self.kind, exc)
                self.last_error = str(exc)


class FrameImageSink(QueuedSink):
    """FOLDER/SOURCE/RUN/FRAME_frame.png, _overlay.png and _mask.png (the final mask: the refined one
    where CLIP-SAM refined it). Rendering happens here, off the inference path.

    guard: a DiskGuard; while it says the disk is low, frames are not written (counted disk_skipped)."""

    kind = "images"

    def __init__(
        self,
        folder: Path,
        scoring: Mapping,
        thresholds: Mapping,
        save: str = "anomalies",
        run_id: str = "run",
        guard: DiskGuard | None = None,
        **options,
    ) -> None:
        if save not in SAVE_CHOICES[:2]:
            raise ValueError(f"save must be one of {SAVE_CHOICES[:2]}, got {save!r}")
        self.folder, self.painter = Path(folder), Painter(scoring, thresholds)
        self.run_id, self.guard = run_id, guard
        self.disk_skipped = 0
        super().__init__(only_anomalies=save == "anomalies", **options)

    def counts(self) -> dict:
        return {**super().counts(), "disk_skipped": self.disk_skipped}

    def check_room(self) -> None:
        if self.guard is not None and self.guard.low():
            raise DiskLow()

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        self.check_room()
        base = self.folder / frame.source / self.run_id / f"{frame.index:08d}"
        mask = result.refinement.mask if result.refinement is not None else result.mask
        write_image_atomic(base.with_name(f"{base.name}_frame.png"), frame.image)
        write_image_atomic(base.with_name(f"{base.name}_overlay.png"), self.painter.overlay(frame, result, event))
        write_image_atomic(base.with_name(f"{base.name}_mask.png"), mask.astype(np.uint8) * 255)

    def use_model(self, scoring: Mapping, record: Mapping) -> None:
        self.painter.use_model(scoring, record)


class Painter:
    """Draws a frame's overlay with the thresholds of the bundle that scored it: after a rollout,
    the frames whose events name the new bundle's digest are drawn with its own."""

    def __init__(self, scoring: Mapping, thresholds: Mapping) -> None:
        self.scoring, self.thresholds = scoring, thresholds
        self._by_digest: dict[str | None, tuple[Mapping, Mapping]] = {}

    def use_model(self, scoring: Mapping, record: Mapping) -> None:
        """A rolled-out bundle: its frames (events naming its digest) are drawn with its thresholds."""
        self._by_digest[record.get("digest")] = (scoring, record["thresholds"])

    def model_of(self, event: dict) -> tuple[Mapping, Mapping]:
        """The scoring and thresholds that judged this event's frame: its bundle's, with its source's
        own thresholds in their place where the station file sets them (source_rules.py)."""
        scoring, thresholds = self._by_digest.get(event.get("bundle_digest"), (self.scoring, self.thresholds))
        own = {key: event[key] for key in ("image_threshold", "map_threshold") if key in event}
        if own:
            scoring = {**scoring, **own}
            thresholds = {**thresholds, "source": "source rule", "image": scoring["image_threshold"]}
        return scoring, thresholds

    def overlay(self, frame: Frame, result: DetectionResult, event: dict) -> np.ndarray:
        return render_overlay(frame.image, result, *self.model_of(event), stamp=stamp(frame))


def stamp(frame: Frame) -> str:
    """What a picture shows: source, part id (or frame number) and capture time (UTC)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(frame.captured_at))
    part = f"part {frame.details['part_id']}" if "part_id" in frame.details else f"frame {frame.index}"
    return f"{frame.source} | {part} | {when} UTC"


class VideoSink(FrameImageSink):
    """FOLDER/SOURCE/RUN-NNNN.mp4: every frame's overlay (heatmap, contour, verdict header), in
    segments of `segment_s` seconds of video, each closed (playable) before the next opens, so a
    crash loses at most the open one; the last is closed on stop.

    Frame rate: the source's own where it states one (video files); otherwise the rate at which the
    source's frames reach the sink, measured over its first RATE_PROBE_FRAMES frames (held back
    until then), so a camera thinned by drops or --max-fps still plays back in real time.
    """

    kind = "video"

    def __init__(
        self,
        folder: Path,
        scoring: Mapping,
        thresholds: Mapping,
        fps: Mapping[str, float | None],
        segment_s: float = DEFAULT_SEGMENT_S,
        **options,
    ):
        if segment_s <= 0:
            raise ValueError("a video segment must be > 0 seconds long")
        self.fps, self.segment_s = fps, segment_s
        self._writers: dict[str, Segment] = {}
        self._probing: dict[str, list[tuple[float, np.ndarray]]] = {}
        super().__init__(folder, scoring, thresholds, save="all", **options)

    def handle(self, frame: Frame, result: DetectionResult, event: dict) -> None:
        self.check_room()
        overlay = self.painter.overlay(frame, result, event)
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
        frames = max(1, round(fps * self.segment_s))
        self._writers[source] = Segment(self.folder / source, self.run_id, fps, (width, height), frames)
        for _, overlay in probe:
            self._write(source, overlay)

    def _write(self, source: str, overlay: np.ndarray) -> None:
        self._writers[source].write(overlay)

    def finish(self) -> None:
        for source in list(self._probing):  # sources that ended before their rate was measured
            self._start(source)
        for segment in self._writers.values():
            segment.close()
        self._writers.clear()


class Segment:
    """A source's video as files of `frames` frames each: FOLDER/RUN-0001.mp4, RUN-0002.mp4, ..."""

    def __init__(self, folder: Path, run_id: str, fps: float, size: tuple[int, int], frames: int) -> None:
        self.folder, self.run_id, self.fps, self.size, self.frames = folder, run_id, fps, size, frames
        self.number = self.count = 0
        self._writer: cv2.VideoWriter | None = None

    def write(self, overlay: np.ndarray) -> None:
        if self._writer is None or self.count >= self.frames:
            self._next()
        if (overlay.shape[1], overlay.shape[0]) != self.size:  # a source whose frame size changed
            overlay = cv2.resize(overlay, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _next(self) -> None:
        self.close()
        self.number, self.count = self.number + 1, 0
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.run_id}-{self.number:04d}.mp4"
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
        if not self._writer.isOpened():
            raise OSError(f"cannot write video {path} (this OpenCV build lacks an mp4v encoder?)")


def measured_rate(times: list[float]) -> float:
    """Frames per second from monotonic capture times, within [1, 120]; DEFAULT_VIDEO_FPS from fewer
    than two frames."""
    if len(times) < 2 or times[-1] <= times[0]:
        return DEFAULT_VIDEO_FPS
    return min(120.0, max(1.0, (len(times) - 1) / (times[-1] - times[0])))
