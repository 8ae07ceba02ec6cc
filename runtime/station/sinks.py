"""Sinks for what a station finds, each on its own thread behind a bounded queue.

A sink must never slow the line: when it falls behind (a slow disk or network), its oldest
pending item is dropped and counted, and inference goes on. `close` writes what is still queued.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any, Mapping

from ..image_io import write_image_atomic
from ..overlay import render_overlay
from .sources import Frame


class DefectImageSink:
    """The overlay of every anomalous frame as OUT/<source>/<frame index>.png (rendering happens here, off
    the inference path)."""

    def __init__(self, folder: Path, scoring: Mapping, thresholds: Mapping, queue_size: int = 32) -> None:
        self.folder = Path(folder)
        self.scoring, self.thresholds = scoring, thresholds
        self.written = self.dropped = 0
        self._queue: deque[tuple[Frame, Any]] = deque()
        self._size = queue_size
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sink-defects", daemon=True)
        self._thread.start()

    def __call__(self, frame: Frame, result: Any) -> None:
        """Queue an anomalous frame; never blocks (the oldest pending one goes when the queue is full)."""
        if not result.is_anomalous:
            return
        with self._wake:
            if len(self._queue) >= self._size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((frame, result))
            self._wake.notify()

    def write(self, frame: Frame, result: Any) -> None:
        overlay = render_overlay(frame.image, result, self.scoring, self.thresholds)
        write_image_atomic(self.folder / frame.source / f"{frame.index:08d}.png", overlay)

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def counts(self) -> dict[str, int]:
        return {"written": self.written, "dropped": self.dropped}

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                frame, result = self._queue.popleft()
            self.write(frame, result)
            self.written += 1
