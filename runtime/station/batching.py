"""Dynamic batching across sources: a batch closes when full or `max_wait_s` after its first frame,
so a lone slow camera is not held back waiting for company. Waiting is on the sources' shared
`arrived` event, not a polling loop: an idle station costs no CPU."""

from __future__ import annotations

import threading
import time
from typing import Sequence

from .sources import Frame, FrameSource


def gather(
    sources: Sequence[FrameSource], batch_size: int, max_wait_s: float, arrived: threading.Event, idle_s: float
) -> list[Frame]:
    """Up to batch_size frames, taken in turn from each source, waiting at most max_wait_s after the first.

    With no frame at all it returns an empty list after idle_s, so the caller can look at stops and
    stalls between waits.
    """
    batch: list[Frame] = []
    deadline: float | None = None
    while True:
        arrived.clear()
        took = True
        while took and len(batch) < batch_size:
            took = False
            for source in sources:
                frame = source.get() if len(batch) < batch_size else None
                if frame is not None:
                    batch.append(frame)
                    took = True
        if len(batch) >= batch_size or all(source.finished for source in sources):
            return batch
        if not batch:
            if not arrived.wait(idle_s):
                return batch
            continue
        now = time.monotonic()
        deadline = now + max_wait_s if deadline is None else deadline
        if now >= deadline:
            return batch
        arrived.wait(deadline - now)
