"""The station loop: frames from every source batched across sources, one event per frame, in order.

A batch closes when it holds `batch_size` frames or `max_wait_ms` after its first frame, so a
lone slow camera is not held back waiting for company. Per source, events come in capture order.
A stop request stops capture at once; the frames already queued are still processed.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

from ..pipeline import DetectionPipeline
from ..stopping import NEVER, StopRequest
from .sources import Frame, FrameSource

POLL_S = 0.001


def _gather(sources: Sequence[FrameSource], batch_size: int, max_wait_s: float) -> list[Frame]:
    """Up to batch_size frames, taken in turn from each source, waiting at most max_wait_s after the first."""
    batch: list[Frame] = []
    deadline = None
    while len(batch) < batch_size:
        took = False
        for source in sources:
            frame = source.get() if len(batch) < batch_size else None
            if frame is not None:
                batch.append(frame)
                took = True
        if batch and deadline is None:
            deadline = time.monotonic() + max_wait_s
        if len(batch) >= batch_size or (deadline is not None and time.monotonic() >= deadline):
            break
        if not took:
            if not batch and all(source.finished for source in sources):
                break
            if not batch:
                return batch  # let the caller check for a stop between polls
            time.sleep(POLL_S)
    return batch


def watch(
    detector: DetectionPipeline,
    sources: Sequence[FrameSource],
    batch_size: int = 1,
    max_wait_ms: float = 20.0,
    stop: StopRequest = NEVER,
    sinks: Sequence[Callable[[Frame, Any], None]] = (),
) -> Iterator[dict]:
    """Run the sources (started here, stopped on exit); yield one event per processed frame, and the sources'
    status events (source_down / source_up) as they happen. Each sink gets every (frame, result)."""
    for source in sources:
        source.start()
    capture_stopped = False
    try:
        while True:
            if stop.requested and not capture_stopped:
                for source in sources:
                    source.stop()
                capture_stopped = True
            for source in sources:
                yield from source.statuses()
            batch = _gather(sources, batch_size, max_wait_ms / 1000.0)
            if not batch:
                if all(source.finished for source in sources):
                    for source in sources:
                        yield from source.statuses()
                    return
                time.sleep(POLL_S)
                continue
            results = detector.detect_batch([frame.image for frame in batch])
            done = time.time()
            for frame, result in zip(batch, results):
                for sink in sinks:
                    sink(frame, result)
                yield {
                    "event": "frame",
                    "source": frame.source,
                    "frame": frame.index,
                    "origin": frame.origin,
                    "captured_at": round(frame.captured_at, 6),
                    "latency_ms": round((done - frame.captured_at) * 1e3, 3),
                    "score": result.score,
                    "is_anomalous": result.is_anomalous,
                    "text_score": result.text_score,
                    "map_peak": result.map_peak,
                }
    finally:
        for source in sources:
            source.stop()
        for source in sources:
            source.join(timeout=5.0)
