"""Watching a station from outside: Prometheus metrics at /metrics and a health check at /healthz.

The numbers are read from the station's stats when scraped, so serving them costs the frame loop
nothing. Bound to localhost unless told otherwise: a station's numbers are not for the whole
plant network by default. A port already in use stops the station at start, before any frame.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from ..errors import ZsadEdgeError
from .station import Station

METRICS_EXTRA = "pip install 'zsad-edge[station]'"
SOURCE_COUNTERS = ("captured", "processed", "dropped", "skipped", "anomalies")
SINK_OUTCOMES = (
    "written",
    "dropped",
    "rate_limited",
    "failed",
    "abandoned",
    "delivered",
    "disk_skipped",
    "not_drawn",
)


def health(station: Station) -> tuple[bool, dict]:
    """Healthy while the station runs, every source is up, every forwarding sink is connected and the
    event log has room; the body says which is not."""
    sources = {name: counts["up"] for name, counts in station.stats.per_source().items()}
    sinks = {sink.kind: sink.state() for sink in station.sinks if sink.state()}
    outputs = {name: output.state() for name, output in station.monitored.items()}
    running = station.running and station.error is None
    fine = (
        all(sources.values())
        and all(state.get("connected", True) for state in sinks.values())
        and not any(state.get("disk_full") for state in outputs.values())
    )
    state = "ok" if running and fine else ("degraded" if running else "stopped")
    return state == "ok", {"status": state, "sources_up": sources, "sinks": sinks, **outputs}


class StationCollector:
    """A prometheus_client collector reading a station's stats at scrape time."""

    def __init__(self, station: Station) -> None:
        self.station = station

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        per_source = self.station.stats.per_source()
        for counter in SOURCE_COUNTERS:
            family = CounterMetricFamily(f"zsad_frames_{counter}", f"frames {counter}, per source", labels=["source"])
            for name, counts in per_source.items():
                family.add_metric([name], counts[counter])
            yield family
        up = GaugeMetricFamily(
            "zsad_source_up", "1 while the source delivers, 0 while it is reconnecting", labels=["source"]
        )
        paused = GaugeMetricFamily("zsad_source_paused", "1 while an operator has paused the source", labels=["source"])
        for name, counts in per_source.items():
            up.add_metric([name], float(counts["up"]))
            paused.add_metric([name], float(counts["paused"]))
        yield up
        yield paused
        latency = GaugeMetricFamily(
            "zsad_latency_ms", "per-stage latency over the recent frames", labels=["stage", "quantile"]
        )
        for stage, quantiles in self.station.stats.latency_ms().items():
            for name, value in quantiles.items():
                latency.add_metric([stage, f"0.{name[1:]}"], value)
        yield latency
        yield self._bundle(GaugeMetricFamily)
        sinks = CounterMetricFamily("zsad_sink_items", "what each sink did with its items", labels=["sink", "outcome"])
        for sink in self.station.sinks:
            counts = sink.counts()
            for outcome in SINK_OUTCOMES:
                if outcome in counts:
                    sinks.add_metric([sink.kind, outcome], counts[outcome])
        yield sinks
        connected = GaugeMetricFamily("zsad_sink_up", "1 while a forwarding sink reaches its receiver", labels=["sink"])
        spooled = GaugeMetricFamily("zsad_sink_spooled", "messages waiting in a sink's spool", labels=["sink"])
        for sink in self.station.sinks:
            state = sink.state()
            if "connected" in state:
                connected.add_metric([sink.kind], float(state["connected"]))
                spooled.add_metric([sink.kind], state["spooled"])
        yield connected
        yield spooled
        events = self.station.monitored.get("events")
        if events is not None:
            state = events.state()
            yield GaugeMetricFamily("zsad_disk_full", "1 while the event log finds no room on the disk",
                                    value=float(state["disk_full"]))  # fmt: skip
            yield GaugeMetricFamily("zsad_events_held", "events held in memory for want of disk room",
                                    value=state["held"])  # fmt: skip

    def _bundle(self, gauge):
        """zsad_bundle_info: which bundle (digest, signer) the station runs; 1 for the running one."""
        record = self.station.current.record
        signature = record.get("signature") or {}
        family = gauge("zsad_bundle_info", "the bundle the station runs now (value 1)",
                       labels=["bundle", "digest", "method", "precision", "signer", "signature"])  # fmt: skip
        family.add_metric([str(record.get("bundle", "")), str(record.get("digest", "")), str(record.get("method", "")),
                           str(record.get("precision", "")), str(signature.get("key_id") or ""),
                           str(signature.get("state", ""))], 1.0)  # fmt: skip
        return family


class MetricsServer:
    """Serves /metrics (Prometheus text format) and /healthz (JSON; 200 healthy, 503 otherwise)."""

    def __init__(self, station: Station, port: int, host: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        except ImportError:
            raise ZsadEdgeError(f"--metrics-port needs prometheus_client: {METRICS_EXTRA}") from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StationCollector(station))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
                if self.path.split("?")[0] == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif self.path.split("?")[0] == "/healthz":
                    healthy, body = health(station)
                    self._send(200 if healthy else 503, "application/json", json.dumps(body).encode())
                else:
                    self._send(404, "text/plain", b"/metrics or /healthz\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # scrapes every few seconds: not worth a log line
                pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ZsadEdgeError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror}") from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
