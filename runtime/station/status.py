"""The live status line: frames per second, drops and anomalies per source, and latency.

On a terminal it is rewritten in place; into a log (systemd's journal, docker logs) it is one
line per interval, so the log shows the station's history without flooding it.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from .stats import StationStats


class StatusLine:
    """Prints the stats every `interval_s` on its own thread until `close`."""

    def __init__(self, stats: StationStats, interval_s: float = 5.0, stream: TextIO = sys.stderr) -> None:
        self.stats, self.interval_s, self.stream = stats, interval_s, stream
        self.in_place = stream.isatty()
        self._previous = {name: 0 for name in stats.sources}
        self._previous_at = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> "StatusLine":
        self._thread.start()
        return self

    def render(self) -> str:
        """One line: per source `name fps, dropped, anomalous` (DOWN while reconnecting, PAUSED by
        an operator), then latency."""
        now = time.monotonic()
        elapsed = max(now - self._previous_at, 1e-9)
        parts = []
        for name, counts in self.stats.per_source().items():
            fps = (counts["processed"] - self._previous[name]) / elapsed
            self._previous[name] = counts["processed"]
            state = " DOWN" if not counts["up"] else (" PAUSED" if counts["paused"] else "")
            parts.append(f"{name}{state} {fps:.1f} f/s {counts['dropped']} dropped {counts['anomalies']} anomalous")
        self._previous_at = now
        total = self.stats.latency_ms().get("total")
        latency = f"latency p50 {total['p50']:.0f} ms p99 {total['p99']:.0f} ms" if total else "no frame yet"
        return " | ".join([*parts, latency])

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            if self.in_place:
                self.stream.write("\n")
                self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            line = self.render()
            self.stream.write(f"\r{line}\x1b[K" if self.in_place else f"{line}\n")
            self.stream.flush()
