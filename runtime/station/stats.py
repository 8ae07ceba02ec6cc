"""A station's running numbers: per-source counts, recent per-stage latencies, frames per second.

Updated by the station's last stage (one thread) and read by the status line, the metrics
endpoint and the summary (other threads), under one lock. Latencies keep the most recent
LATENCY_WINDOW frames, so memory stays flat over weeks of running.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Sequence

import numpy as np

from .sources import FrameSource

LATENCY_WINDOW = 10_000
PERCENTILES = (50, 95, 99)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 of the values (zeros when there are none yet)."""
    data = np.asarray(values, dtype=np.float64) if len(values) else np.zeros(1)
    return {f"p{q}": round(float(np.percentile(data, q)), 3) for q in PERCENTILES}


class StationStats:
    """Counts and latency windows of one station run."""

    def __init__(self, sources: Sequence[FrameSource]) -> None:
        self.sources = {source.name: source for source in sources}
        self.processed = dict.fromkeys(self.sources, 0)
        self.anomalies = dict.fromkeys(self.sources, 0)
        self.up = dict.fromkeys(self.sources, True)
        self.down_reason: dict[str, str | None] = dict.fromkeys(self.sources)
        self.server_dropped = dict.fromkeys(self.sources, 0)
        self.latency: dict[str, deque[float]] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def record(self, event: dict) -> None:
        """Count one event (frames, and the sources' down / up status)."""
        with self._lock:
            if event["event"] in ("source_down", "source_up"):
                self.up[event["source"]] = event["event"] == "source_up"
                self.down_reason[event["source"]] = event.get("reason") if event["event"] == "source_down" else None
            if event["event"] != "frame":
                return
            source = event["source"]
            self.processed[source] += 1
            self.anomalies[source] += int(event["is_anomalous"])
            for stage, ms in {**event["stages_ms"], "total": event["latency_ms"]}.items():
                self.latency.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(ms)

    def drop(self, source: str) -> None:
        """Count a captured frame that was never scored: its model server stayed down through a stop."""
        with self._lock:
            self.server_dropped[source] += 1

    def per_source(self) -> dict[str, dict]:
        """Per source: captured, processed, dropped (by the source when the station was behind, and
        `server_dropped` of those, when a model server stayed down through a stop), skipped (with
        the first reasons; `skipped_paused` of those while paused), anomalies, up (and
        why not), paused."""
        with self._lock:
            return {
                name: {
                    "captured": source.counts.captured,
                    "processed": self.processed[name],
                    "dropped": source.counts.dropped + self.server_dropped[name],
                    "server_dropped": self.server_dropped[name],
                    "skipped": source.counts.skipped,
                    "skipped_paused": source.counts.paused,
                    "paused": source.paused,
                    "skipped_items": source.counts.skipped_items[:100],
                    "anomalies": self.anomalies[name],
                    "up": self.up[name],
                    "down_reason": self.down_reason[name],
                }
                for name, source in self.sources.items()
            }

    def latency_ms(self) -> dict[str, dict[str, float]]:
        """p50 / p95 / p99 per stage (and `total`, capture to result) over the recent window."""
        with self._lock:
            windows = {stage: list(values) for stage, values in self.latency.items()}
        return {stage: percentiles(values) for stage, values in windows.items()}

    def summary(self, stopped: str | None = None) -> dict:
        """What summary.json holds."""
        elapsed = time.monotonic() - self.started
        sources = self.per_source()
        processed = sum(s["processed"] for s in sources.values())
        for counts in sources.values():
            counts["frames_per_s"] = round(counts["processed"] / max(elapsed, 1e-9), 3)
        return {
            "sources": sources,
            "processed": processed,
            "anomalies": sum(s["anomalies"] for s in sources.values()),
            "dropped": sum(s["dropped"] for s in sources.values()),
            "frames_per_s": round(processed / max(elapsed, 1e-9), 3),
            "latency_ms": self.latency_ms(),
            "elapsed_s": round(elapsed, 3),
            "stopped": stopped,
        }
