"""Frame sources, each with a capture thread and a bounded queue, and exact counts of what happened.

Backpressure is a property of the source: a live source (camera, network stream) keeps the newest
frames and drops the oldest when the queue is full, so latency stays bounded; a recorded source
(video file, image folder) waits for room and never drops. Every frame a source reads is counted
as captured, dropped (live, queue full), skipped (undecodable, left out by stride / max-fps, or
captured while the source was paused), or queued for the detector: captured = delivered + dropped
+ skipped + still queued, always. A paused live source keeps capturing and skips what it reads;
a paused recorded source stops reading until it is resumed, so no file is passed over.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from ..errors import ZsadEdgeError
from .credentials import expand, masked


@dataclass
class Frame:
    """One frame of one source: its index among the source's captured frames, when it was read (wall clock
    and monotonic), where from."""

    source: str
    index: int
    captured_at: float
    captured_monotonic: float
    image: np.ndarray
    origin: str = ""
    # called once the frame's event is on record (drop folders mark the file done then)
    receipt: Callable[[], None] | None = None
    details: dict[str, Any] = field(default_factory=dict)  # more for its event (a file's key, a part id)


@dataclass
class SourceCounts:
    captured: int = 0
    delivered: int = 0
    dropped: int = 0
    skipped: int = 0
    paused: int = 0  # of the skipped: captured while paused
    skipped_items: list[str] = field(default_factory=list)


class FrameSource(ABC):
    """Reads frames on its own thread into a bounded queue; `get` hands them to the station.

    live: drop the oldest queued frame when the queue is full (else wait for room).
    stride: keep every Nth captured frame; max_fps: keep at most this many frames per second.
    stall_s: a reconnecting source that captures no frame for this long is treated as lost
    (`check_stall`, called by the station, interrupts it through `unblock`).
    """

    live = False
    reconnects = False  # a source that can be reopened when lost (implements reopen); others just end
    backoff_s = 0.5  # first wait before reopening a lost live source, doubled up to max_backoff_s
    max_backoff_s = 30.0

    def __init__(
        self,
        name: str,
        queue_size: int = 4,
        stride: int = 1,
        max_fps: float | None = None,
        stall_s: float | None = None,
    ) -> None:
        if queue_size < 1 or stride < 1 or (max_fps is not None and max_fps <= 0):
            raise ZsadEdgeError(f"source {name}: queue size and stride must be >= 1 and max fps > 0")
        if stall_s is not None and stall_s <= 0:
            raise ZsadEdgeError(f"source {name}: the stall time must be > 0 seconds")
        self.name = name
        self.stall_s = stall_s
        self.counts = SourceCounts()
        self._queue: deque[Frame] = deque()
        self._size = queue_size
        self._stride = stride
        self._min_interval = 1.0 / max_fps if max_fps else 0.0
        self._last_kept = -float("inf")
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._finished = False
        self._statuses: list[dict] = []
        self._reading = False  # inside read(): the only time a stall can be noticed
        self._last_capture = time.monotonic()
        self._stalled = threading.Event()
        self._resumed = threading.Event()  # clear while paused
        self._resumed.set()
        # set on every queued frame, status and end; the station waits on it
        self.arrivals: threading.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"source-{name}", daemon=True)

    @property
    def fps(self) -> float | None:
        """The source's own frame rate where it states one (video files); None otherwise."""
        return None

    @abstractmethod
    def read(self) -> Iterator[tuple[np.ndarray | None, str]]:
        """(image, origin) per captured frame (image None if undecodable); ends where the source ends."""

    def start(self) -> "FrameSource":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop capturing; frames already queued stay available to `get`."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def pause(self) -> None:
        """Stop handing frames to the station (station.pause_source records who asked and when)."""
        self._resumed.clear()

    def resume(self) -> None:
        self._resumed.set()

    @property
    def finished(self) -> bool:
        """True once capture has ended and every queued frame was handed out."""
        with self._lock:
            return self._finished and not self._queue

    def get(self) -> Frame | None:
        """The oldest queued frame, or None when there is none right now."""
        with self._lock:
            if not self._queue:
                return None
            frame = self._queue.popleft()
            self.counts.delivered += 1
            self._lock.notify_all()
            return frame

    def reopen(self) -> None:
        """Open the source again after it was lost (sources with `reconnects`); raise ZsadEdgeError while
        it is still unavailable."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds (a device, a stream) once capture has ended."""

    def unblock(self) -> None:
        """Make a stalled `read` return (called from another thread); sources whose reads time out by
        themselves need nothing."""

    def check_stall(self) -> bool:
        """True (once) when a reconnecting source has captured nothing for stall_s: it is then interrupted
        and reopened like a lost one, with source_down / source_up events."""
        if not (self.reconnects and self.stall_s and self._reading) or self._stalled.is_set():
            return False
        if time.monotonic() - self._last_capture < self.stall_s:
            return False
        self._stalled.set()
        self.unblock()
        return True

    def statuses(self) -> list[dict]:
        """Status events (source_down / source_up) since the last call."""
        with self._lock:
            events, self._statuses = self._statuses, []
            return events

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._last_capture, self._reading = time.monotonic(), True
                try:
                    for image, origin in self.read():
                        if self._stop.is_set():
                            return
                        if self._stalled.is_set():
                            break
                        self._offer(image, origin)
                    reason = "stream ended"
                except (OSError, cv2.error) as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                self._reading = False
                if self._stalled.is_set():
                    reason = f"no frame for {self.stall_s:g} s"
                    self._stalled.clear()
                if not self.reconnects or self._stop.is_set():
                    return
                self._reconnect(reason)
        finally:
            self.close()
            with self._lock:
                self._finished = True
                self._lock.notify_all()
            self._announce()

    def _announce(self) -> None:
        if self.arrivals is not None:
            self.arrivals.set()

    def _reconnect(self, reason: str) -> None:
        """A lost live source: source_down, then reopen with capped exponential backoff, then source_up."""
        self._status("source_down", reason)
        delay = self.backoff_s
        while not self._stop.wait(delay):
            try:
                self.reopen()
            except ZsadEdgeError as exc:
                delay = min(2 * delay, self.max_backoff_s)
                reason = str(exc)
                continue
            self._status("source_up", None)
            return

    def _status(self, kind: str, reason: str | None, **details: Any) -> None:
        event = {"event": kind, "source": self.name, "time": round(time.time(), 6), "reason": reason, **details}
        with self._lock:
            self._statuses.append(event)
        self._announce()

    def _offer(self, image: np.ndarray | None, origin: str) -> None:
        while not self.live and self.paused and not self._stop.is_set():
            self._resumed.wait(0.1)  # a recorded source holds its next frame until resumed
        index = self.counts.captured
        self.counts.captured += 1
        now = self._last_capture = time.monotonic()
        if self.paused:
            with self._lock:
                self.counts.paused += 1
            self._skip(None)
            return
        if image is None:
            self._skip(f"{origin}: could not be decoded")
            return
        if index % self._stride or now - self._last_kept < self._min_interval:
            self._skip(None)
            return
        self._last_kept = now
        frame = self._frame(index, now, image, origin)
        with self._lock:
            if self.live and len(self._queue) >= self._size:
                self._queue.popleft()
                self.counts.dropped += 1
            while not self.live and len(self._queue) >= self._size and not self._stop.is_set():
                self._lock.wait(0.1)
            self._queue.append(frame)
            self._lock.notify_all()
        self._announce()

    def _frame(self, index: int, now: float, image: np.ndarray, origin: str) -> Frame:
        """The Frame of a kept capture; sources that know more about it (a file) add it here."""
        return Frame(self.name, index, time.time(), now, image, origin)

    def _skip(self, reason: str | None) -> None:
        with self._lock:
            self.counts.skipped += 1
            if reason:
                self.counts.skipped_items.append(reason)


class VideoFileSource(FrameSource):
    """A video file (anything OpenCV's FFmpeg decodes); `loop` restarts it, `realtime` paces it at its own fps."""

    def __init__(self, name: str, path: Path, loop: bool = False, realtime: bool = False, **options: Any) -> None:
        super().__init__(name, **options)
        self.path = Path(path)
        if not self.path.is_file():
            raise ZsadEdgeError(f"source {name}: video file not found: {self.path}")
        capture = cv2.VideoCapture(str(self.path))
        ok = capture.isOpened()
        self._fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        capture.release()
        if not ok:
            raise ZsadEdgeError(f"source {name}: cannot open video {self.path} (not a video, or a codec FFmpeg lacks)")
        self.loop, self.realtime = loop, realtime

    @property
    def fps(self) -> float | None:
        return self._fps or None

    def read(self) -> Iterator[tuple[np.ndarray | None, str]]:
        interval = 1.0 / self._fps if self.realtime and self._fps > 0 else 0.0
        while not self._stop.is_set():
            capture = cv2.VideoCapture(str(self.path))
            position = 0
            next_time = time.monotonic()
            while not self._stop.is_set():
                ok, bgr = capture.read()
                if not ok:
                    break
                if interval:
                    next_time += interval
                    time.sleep(max(0.0, next_time - time.monotonic()))
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self.path.name}#{position}"
                position += 1
            capture.release()
            if not self.loop:
                return


NETWORK_SCHEMES = ("rtsp://", "http://", "https://")
DEFAULT_NETWORK_TIMEOUT_S = 10.0


class CaptureSource(FrameSource):
    """A camera or stream through OpenCV: a device number or /dev/videoN, rtsp:// or http(s):// URLs,
    or a GStreamer pipeline (`gst:...`, refused when this OpenCV lacks GStreamer). Live: drops oldest."""

    live = True
    reconnects = True

    def __init__(self, name: str, uri: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.uri = expand(uri, f"source {name}")
        self.shown = masked(self.uri)  # what events, logs and errors say: never the credentials
        if uri.startswith("gst:") and "GStreamer:                   YES" not in cv2.getBuildInformation():
            raise ZsadEdgeError(
                f"source {name}: this OpenCV has no GStreamer support (the PyPI wheel lacks it; "
                f"JetPack's OpenCV has it): cannot open {self.shown!r}"
            )
        self._capture = self._open()
        if not self._capture.isOpened():
            raise ZsadEdgeError(
                f"source {name}: cannot open {self.shown!r} (no such camera, the stream is unreachable, "
                "or its credentials were refused)"
            )

    def _open(self) -> cv2.VideoCapture:
        if self.uri.startswith("gst:"):
            return cv2.VideoCapture(self.uri[4:], cv2.CAP_GSTREAMER)
        if self.uri.startswith(NETWORK_SCHEMES):  # FFmpeg gives up on a silent stream by itself
            timeout_ms = int(1000 * (self.stall_s or DEFAULT_NETWORK_TIMEOUT_S))
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)
        target: Any = int(self.uri) if self.uri.isdigit() else self.uri
        return cv2.VideoCapture(target)

    def close(self) -> None:
        self._capture.release()

    def reopen(self) -> None:
        self._capture.release()
        self._capture = self._open()
        if not self._capture.isOpened():
            raise ZsadEdgeError(f"source {self.name}: {self.shown!r} is still unavailable")

    def read(self) -> Iterator[tuple[np.ndarray | None, str]]:
        position = 0
        while not self._stop.is_set():
            ok, bgr = self._capture.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self.shown}#{position}"
            position += 1
