"""`zsad-edge watch`: run a station on live and recorded sources; events.jsonl and summary.json in --out.

Sources are `[name=]URI`: a video file, an image folder (`--follow` keeps watching it for new
files, each taken exactly once, also across restarts), a camera number or /dev/videoN, an
rtsp:// or http(s):// stream, or gst:PIPELINE. Live sources drop their oldest frames when the
detector falls behind; files and folders never drop. Everything that can fail at start (sources,
the output folder, the MQTT broker, the metrics port) is checked before the first frame.
SIGINT/SIGTERM stops capture, processes the frames already captured, closes the sinks (videos
play), writes summary.json and exits 0; a second signal exits at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import ZsadEdgeError
from ..image_io import write_bytes_atomic
from ..station.events import EventLog
from ..station.messaging import MqttSink, MqttTarget, WebhookSink
from ..station.metrics import MetricsServer
from ..station.sinks import SAVE_CHOICES, FrameImageSink, QueuedSink, VideoSink
from ..station.sources import FrameSource, open_source
from ..station.station import Station
from ..station.status import StatusLine
from ..stopping import StopRequest
from .common import backend_arguments, open_detector
from .detect import run_record

HELP = "run a station: cameras, streams, video files and drop folders in; a verdict per frame out"
PARENTS = (backend_arguments(),)
POLL_S = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "sources", nargs="+", help="[name=]URI: video file, image folder, camera, rtsp/http URL, gst:..."
    )
    parser.add_argument("--memory-bank", type=Path, help="few-shot: a bank written by `zsad-edge fit-normal`")
    capture = parser.add_argument_group("sources")
    capture.add_argument("--queue-size", type=int, default=4, help="frames each source may hold")
    capture.add_argument("--stride", type=int, default=1, help="keep every Nth frame of each source")
    capture.add_argument("--max-fps", type=float, help="keep at most this many frames per second per source")
    capture.add_argument("--loop", action="store_true", help="video files: start again at the end")
    capture.add_argument("--realtime", action="store_true", help="video files: deliver at the file's own frame rate")
    capture.add_argument("--follow", action="store_true", help="image folders: keep taking new files as they arrive")
    capture.add_argument(
        "--stall-s", type=float, default=10.0, help="cameras and streams: reopen one that gives no frame this long"
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument("--batch-size", type=int, default=1, help="frames per model call, across sources")
    batching.add_argument("--max-wait-ms", type=float, default=20.0, help="longest wait to fill a batch")
    outputs = parser.add_argument_group("outputs (each sink on its own thread; when behind, it drops, counted)")
    outputs.add_argument("--out", type=Path, required=True, help="folder for events.jsonl, summary.json and images")
    outputs.add_argument("--events", choices=("all", "anomalies"), default="all", help="frames written to events.jsonl")
    outputs.add_argument(
        "--save", choices=SAVE_CHOICES, default="none", help="frame, overlay and mask PNGs in OUT/frames/SOURCE/"
    )
    outputs.add_argument("--save-rate", type=float, help="at most this many saved frames per second per source")
    outputs.add_argument("--video", action="store_true", help="an annotated video per source: OUT/video/SOURCE.mp4")
    outputs.add_argument("--mqtt", metavar="URL", help="publish anomalies: mqtt[s]://[user@]host[:port]/topic")
    outputs.add_argument("--mqtt-username", help="MQTT user (the password comes from $ZSAD_EDGE_MQTT_PASSWORD)")
    outputs.add_argument("--mqtt-ca", help="TLS: CA certificate file (implies TLS)")
    outputs.add_argument("--mqtt-cert", help="TLS: client certificate file")
    outputs.add_argument("--mqtt-key", help="TLS: client key file")
    outputs.add_argument("--mqtt-rate", type=float, default=2.0, help="at most this many messages/s per source")
    outputs.add_argument("--webhook", metavar="URL", help="POST each anomaly's event as JSON to this URL")
    outputs.add_argument("--webhook-rate", type=float, default=2.0, help="at most this many requests/s per source")
    watching = parser.add_argument_group("watching it run")
    watching.add_argument("--status-s", type=float, default=10.0, help="status line interval; 0: none")
    watching.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics and /healthz on this port")
    watching.add_argument("--metrics-host", default="127.0.0.1", help="address to serve metrics on")


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size < 1 or args.max_wait_ms < 0:
        raise ZsadEdgeError("--batch-size must be at least 1 and --max-wait-ms at least 0")
    for flag in ("stall_s", "save_rate", "mqtt_rate", "webhook_rate"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ZsadEdgeError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.status_s < 0:
        raise ZsadEdgeError("--status-s must be >= 0")


def open_sources(args: argparse.Namespace) -> list[FrameSource]:
    options = {"queue_size": args.queue_size, "stride": args.stride, "max_fps": args.max_fps, "stall_s": args.stall_s}
    sources = [
        open_source(
            spec, index, state_folder=args.out, follow=args.follow, loop=args.loop, realtime=args.realtime, **options
        )
        for index, spec in enumerate(args.sources)
    ]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise ZsadEdgeError(f"source names must differ, got {names}: name them with NAME=URI")
    return sources


def open_sinks(args: argparse.Namespace, detector, record: dict, sources: list[FrameSource]) -> list[QueuedSink]:
    """The sinks asked for, each checked now (a broker is connected to) rather than at the first anomaly."""
    sinks: list[QueuedSink] = []
    try:
        if args.save != "none":
            sinks.append(
                FrameImageSink(
                    args.out / "frames", detector.scoring, record["thresholds"], args.save, rate_per_s=args.save_rate
                )
            )
        if args.video:
            fps = {source.name: source.fps for source in sources}
            sinks.append(VideoSink(args.out / "video", detector.scoring, record["thresholds"], fps))
        if args.mqtt:
            tls_files = {"ca_file": args.mqtt_ca, "cert_file": args.mqtt_cert, "key_file": args.mqtt_key}
            target = MqttTarget.parse(args.mqtt, args.mqtt_username, **tls_files)
            sinks.append(MqttSink(target, rate_per_s=args.mqtt_rate))
        if args.webhook:
            sinks.append(WebhookSink(args.webhook, rate_per_s=args.webhook_rate))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    _check_numbers(args)
    started = time.monotonic()
    with EventLog(args.out / "events.jsonl", only_anomalies=args.events == "anomalies") as log:
        sources = open_sources(args)
        detector = open_detector(
            args.bundle, args.backend, args.memory_bank, precision=args.precision, device=args.device
        )
        load_s = time.monotonic() - started
        record = run_record(detector, args.bundle, args.precision, args.memory_bank)
        sinks = open_sinks(args, detector, record, sources)
        station = Station(detector, sources, args.batch_size, args.max_wait_ms, sinks, on_event=log.write)
        watchers: list[MetricsServer | StatusLine] = []
        interrupted = False
        try:
            if args.metrics_port is not None:
                watchers.append(MetricsServer(station, args.metrics_port, args.metrics_host))
            if args.status_s:
                watchers.append(StatusLine(station.stats, args.status_s).start())
            _run_until_done(station, stop)
        except KeyboardInterrupt:  # a second signal: leave now, abandoning what the sinks still hold
            interrupted = True
            raise
        finally:
            for item in [*watchers, *([] if interrupted else sinks)]:
                item.close()
    stopped = f"stopped by {stop.signal_name}" if stop.requested else None
    summary = {
        "run_id": station.run_id,
        **station.stats.summary(stopped),
        "load_s": round(load_s, 3),
        "sinks": {sink.kind: sink.counts() for sink in sinks},
        "run": record,
    }
    write_bytes_atomic(args.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    print(
        f"{summary['processed']} frame(s) from {len(sources)} source(s), {summary['anomalies']} anomalous, "
        f"{summary['dropped']} dropped, {summary['frames_per_s']} frames/s; events in {log.path}"
        + (f" ({stopped})" if stopped else ""),
        file=sys.stdout,
    )
    return 0


def _run_until_done(station: Station, stop: StopRequest) -> None:
    """Run until every source has ended, or a stop request and the frames in flight are done.

    A second signal raises KeyboardInterrupt here: the station is abandoned at once."""
    station.start()
    try:
        while not station.join(POLL_S):
            if stop.requested:
                station.stop()
    finally:
        station.close()
