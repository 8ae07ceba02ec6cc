"""The station's outputs: an append-only JSON-lines event log and the run summary.

Each event is one line, flushed as it is written, so a stop or crash leaves whole lines only.
Latency percentiles use the most recent LATENCY_WINDOW frames, keeping memory flat over weeks.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ZsadEdgeError
from .sources import FrameSource

LATENCY_WINDOW = 10_000


class EventLog:
    """events.jsonl, opened for appending; per-source processed and anomaly counts, recent latencies."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
        except OSError as exc:
            raise ZsadEdgeError(f"cannot write events to {self.path}: {exc.strerror}") from None
        self.processed: dict[str, int] = {}
        self.anomalies: dict[str, int] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def write(self, event: dict) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        if event["event"] != "frame":  # a source's status (source_down / source_up): logged, not counted
            return
        source = event["source"]
        self.processed[source] = self.processed.get(source, 0) + 1
        self.anomalies[source] = self.anomalies.get(source, 0) + int(event["is_anomalous"])
        self.latencies.append(event["latency_ms"])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def summarise(sources: Sequence[FrameSource], log: EventLog, elapsed_s: float, stopped: str | None) -> dict:
    """Per source: frames captured, processed, dropped, skipped, anomalies; latency percentiles; frames/s."""
    latencies = np.array(log.latencies) if log.latencies else np.zeros(1)
    per_source = {
        source.name: {
            "captured": source.counts.captured,
            "processed": log.processed.get(source.name, 0),
            "dropped": source.counts.dropped,
            "skipped": source.counts.skipped,
            "skipped_items": source.counts.skipped_items[:100],
            "anomalies": log.anomalies.get(source.name, 0),
        }
        for source in sources
    }
    processed = sum(s["processed"] for s in per_source.values())
    return {
        "sources": per_source,
        "processed": processed,
        "frames_per_s": round(processed / max(elapsed_s, 1e-9), 3),
        "latency_ms": {f"p{q}": round(float(np.percentile(latencies, q)), 3) for q in (50, 95, 99)},
        "elapsed_s": round(elapsed_s, 3),
        "stopped": stopped,
    }
