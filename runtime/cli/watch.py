"""`zsad-edge watch`: run a station on live and recorded sources; events.jsonl and a summary per run in --out.

Sources are `[name=]URI`: a video file, an image folder (`--follow` keeps watching it for new
files, each scored exactly once and only when complete, also across restarts and crashes), a
camera number or /dev/videoN, an rtsp:// or http(s):// stream, or gst:PIPELINE. Credentials in a
URI can come from the environment or a file: rtsp://admin:${CAM1_PASSWORD}@host/... or
${file:/run/credentials/cam1}; they are shown as *** everywhere. Live sources drop their oldest
frames when the detector falls behind; files and folders never drop. Everything that can fail at
start (sources, the output folder, the MQTT broker, the metrics port) is checked before the
first frame. SIGINT/SIGTERM stops capture, processes the frames already captured, gives the sinks
--drain-s seconds (what is undelivered stays in the spool for the next run), closes the videos
(they play), writes the run's summary and exits 0; a second signal exits at once.
`--ui [HOST:]PORT` serves a live operator page from the same process (runtime/station/ui/): a tile per
source, the latest anomalies, the run record, pause/resume per source; off localhost it needs
--ui-token. While it runs, a new version of its bundle (the folder changed, or a symlink switched to another)
is verified, tried on the latest frames and swapped in between two batches, or refused with a
`bundle_rejected` event while the running one stays (runtime/station/rollout.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..bundle import load_manifest
from ..detector import Detector
from ..errors import ZsadEdgeError
from ..image_io import write_bytes_atomic
from ..run_record import run_record
from ..serving.remote import RemoteDetector
from ..station.config import apply_config, load_config
from ..station.credentials import expand, masked, remember
from ..station.drop_folder import ProcessedAction, reconcile
from ..station.events import EventLog, tail_events
from ..station.messaging import MqttSink, MqttTarget, WebhookSink, parse_header
from ..station.metrics import MetricsServer
from ..station.opening import open_source, split_spec
from ..station.part_trigger import PartTrigger, open_part_trigger
from ..station.plc import OPCUA_FIELDS, ModbusLayout, ModbusSink, OpcUaSink, parse_mapping
from ..station.retention import Retention
from ..station.rollout import Rollout
from ..station.sinks import (
    DEFAULT_DRAIN_S,
    DEFAULT_SEGMENT_S,
    SAVE_CHOICES,
    DiskGuard,
    FrameImageSink,
    QueuedSink,
    VideoSink,
    close_sinks,
)
from ..station.source_rules import SourceRules
from ..station.sources import FrameSource
from ..station.spool import DEFAULT_MAX_ITEMS, Spool
from ..station.station import Station, new_run_id
from ..station.status import StatusLine
from ..station.systemd import Notifier, Watchdog
from ..station.ui.live import LiveView
from ..station.ui.server import UiServer, check_binding, parse_address
from ..stopping import StopRequest
from .common import apply_trusted_keys, backend_arguments, open_detector, trust_arguments

HELP = "run a station: cameras, streams, video files and drop folders in; a verdict per frame out"
PARENTS = (backend_arguments(), trust_arguments())
POLL_S = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "bundle", type=Path, nargs="?", help="the bundle (or `bundle` in --config); with --server, the model's name"
    )
    parser.add_argument(
        "sources", nargs="*", help="[name=]URI: video file, image folder, camera, rtsp/http URL, gst:..."
    )
    parser.add_argument(
        "--config", type=Path, help="a station file (TOML): sources with regions and thresholds, options, retention"
    )
    parser.add_argument("--check-config", action="store_true", help="check --config (and the bundle) and exit")
    parser.add_argument("--memory-bank", type=Path, help="few-shot: a bank written by `zsad-edge fit-normal`")
    parser.add_argument(
        "--server",
        metavar="URL",
        help="score on a model server (`zsad-edge serve`, Triton): grpc://HOST:PORT or http://HOST:PORT; "
        "no model runs here (zsad-edge[remote])",
    )
    capture = parser.add_argument_group("sources")
    capture.add_argument("--queue-size", type=int, default=4, help="frames each source may hold")
    capture.add_argument("--stride", type=int, default=1, help="keep every Nth frame of each source")
    capture.add_argument("--max-fps", type=float, help="keep at most this many frames per second per source")
    capture.add_argument("--loop", action="store_true", help="video files: start again at the end")
    capture.add_argument("--realtime", action="store_true", help="video files: deliver at the file's own frame rate")
    capture.add_argument("--follow", action="store_true", help="image folders: keep taking new files as they arrive")
    capture.add_argument(
        "--settle-s", type=float, default=0.5, help="image folders: a file must not change this long to be taken"
    )
    capture.add_argument(
        "--done-markers", action="store_true", help="image folders: take a file only once NAME.done exists"
    )
    capture.add_argument(
        "--processed",
        default="keep",
        metavar="keep|delete|move:DIR",
        help="image folders: what happens to a file once its event is written",
    )
    capture.add_argument("--part-id", metavar="REGEX", help="image folders: the part id in a file name (group `part`)")
    capture.add_argument(
        "--part-trigger", metavar="URL", help="part ids from the controller: mqtt://broker/topic or opc.tcp://server"
    )
    capture.add_argument("--part-trigger-node", metavar="NODEID", help="with opc.tcp://: the part id variable")
    capture.add_argument(
        "--stall-s", type=float, default=10.0, help="cameras and streams: reopen one that gives no frame this long"
    )
    batching = parser.add_argument_group("batching")
    batching.add_argument("--batch-size", type=int, default=1, help="frames per model call, across sources")
    batching.add_argument("--max-wait-ms", type=float, default=20.0, help="longest wait to fill a batch")
    outputs = parser.add_argument_group("outputs (each sink on its own thread; when behind, it drops, counted)")
    outputs.add_argument("--out", type=Path, help="folder for events.jsonl, summaries, images, video, state, spools")
    outputs.add_argument("--events", choices=("all", "anomalies"), default="all", help="frames written to events.jsonl")
    outputs.add_argument(
        "--save", choices=SAVE_CHOICES, default="none", help="frame, overlay and mask PNGs in OUT/frames/SOURCE/"
    )
    outputs.add_argument("--save-rate", type=float, help="at most this many saved frames per second per source")
    outputs.add_argument(
        "--video", action="store_true", help="annotated video per source, in segments: OUT/video/SOURCE/RUN-NNNN.mp4"
    )
    outputs.add_argument("--video-segment-s", type=float, default=DEFAULT_SEGMENT_S, help="length of a video file")
    outputs.add_argument(
        "--min-free-mb", type=float, default=500.0, help="stop saving images and video below this free disk room"
    )
    outputs.add_argument("--events-rotate-mb", type=float, default=64.0, help="start a new events.jsonl past this size")
    retention = parser.add_argument_group("retention (frames, video segments, rotated event logs in --out)")
    retention.add_argument("--keep-days", type=float, help="remove evidence older than this")
    retention.add_argument("--max-disk-gb", type=float, help="then remove the oldest until the rest fits this")
    outputs.add_argument("--mqtt", metavar="URL", help="publish anomalies: mqtt[s]://[user@]host[:port]/topic")
    outputs.add_argument("--mqtt-username", help="MQTT user (the password comes from $ZSAD_EDGE_MQTT_PASSWORD)")
    outputs.add_argument("--mqtt-ca", help="TLS: CA certificate file (implies TLS)")
    outputs.add_argument("--mqtt-cert", help="TLS: client certificate file")
    outputs.add_argument("--mqtt-key", help="TLS: client key file")
    outputs.add_argument("--mqtt-rate", type=float, default=2.0, help="at most this many messages/s per source")
    outputs.add_argument("--webhook", metavar="URL", help="POST each anomaly's event as JSON to this URL")
    outputs.add_argument("--webhook-rate", type=float, default=2.0, help="at most this many requests/s per source")
    outputs.add_argument(
        "--webhook-header", action="append", default=[], metavar="'NAME: VALUE'", help="add to each request"
    )
    plc = parser.add_argument_group("the line's controller (every frame's verdict; zsad-edge[plc])")
    plc.add_argument("--opcua", metavar="URL", help="an OPC UA server: opc.tcp://[user:password@]host:port[/path]")
    plc.add_argument(
        "--opcua-node", action="append", default=[], metavar="FIELD=NODEID",
        help="verdict, score, part_id, time or count to a node, e.g. verdict=ns=2;s=Line1.Verdict",
    )  # fmt: skip
    plc.add_argument("--modbus", metavar="HOST[:PORT]", help="a Modbus TCP device (a PLC)")
    plc.add_argument("--modbus-unit", type=int, default=1, help="the device's unit (slave) id")
    plc.add_argument(
        "--modbus-map", action="append", default=[], metavar="FIELD=ADDRESS",
        help="score_register (default 0), reject_coil (default 0), count_register (none by default)",
    )  # fmt: skip
    plc.add_argument("--modbus-pulse-ms", type=float, default=200.0, help="how long the reject coil is on")
    outputs.add_argument(
        "--spool-max", type=int, default=DEFAULT_MAX_ITEMS, help="messages each of MQTT and webhook keep while down"
    )
    outputs.add_argument(
        "--drain-s", type=float, default=DEFAULT_DRAIN_S, help="on stop: time for all sinks to finish their work"
    )
    rollout = parser.add_argument_group("bundle rollout (a new version of BUNDLE is swapped in while running)")
    rollout.add_argument(
        "--rollout-check-s", type=float, default=5.0, help="look for a new version this often; 0: never"
    )
    rollout.add_argument(
        "--rollout-settle-s", type=float, default=2.0, help="a new version's files must stay unchanged this long"
    )
    watching = parser.add_argument_group("watching it run")
    watching.add_argument("--status-s", type=float, default=10.0, help="status line interval; 0: none")
    watching.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics and /healthz on this port")
    watching.add_argument("--metrics-host", default="127.0.0.1", help="address to serve metrics on")
    page = parser.add_argument_group("the operator page (zsad-edge[ui])")
    page.add_argument(
        "--ui", metavar="[HOST:]PORT", help="serve a live page of the station (127.0.0.1 unless HOST is given)"
    )
    page.add_argument("--ui-fps", type=float, default=4.0, help="pictures per second per source on the page")
    page.add_argument("--ui-keep", type=int, default=50, help="latest anomalies the page lists, with their pictures")
    page.add_argument(
        "--ui-token",
        metavar="TOKEN",
        help="needed to see and steer the page (required off localhost): '${file:PATH}' or '${ENV_NAME}' keeps "
        "it off the command line",
    )


def _settle_arguments(args: argparse.Namespace) -> dict[str, SourceRules]:
    """Merge --config into the arguments (the command line wins) and check what is needed; the
    sources' rules (regions, thresholds) come back."""
    rules: dict[str, SourceRules] = {}
    if args.config is not None:
        parser = argparse.ArgumentParser(parents=list(PARENTS), add_help=False)
        add_arguments(parser)
        config = load_config(args.config, parser)
        apply_config(args, parser, config)
        rules = config.rules
    if args.bundle is None or not args.sources or args.out is None:
        raise ZsadEdgeError("watch needs a bundle, at least one source and --out, on the command line or in --config")
    if args.server and args.memory_bank:
        raise ZsadEdgeError("with --server the served bundle carries its memory bank: give it to `zsad-edge serve`")
    _check_numbers(args)
    return rules


def _check_numbers(args: argparse.Namespace) -> None:
    if args.batch_size < 1 or args.max_wait_ms < 0:
        raise ZsadEdgeError("--batch-size must be at least 1 and --max-wait-ms at least 0")
    ProcessedAction(args.processed)
    if args.rollout_check_s < 0 or args.rollout_settle_s < 0:
        raise ZsadEdgeError("--rollout-check-s and --rollout-settle-s must be >= 0")
    if args.settle_s < 0 or args.min_free_mb < 0 or args.drain_s < 0 or args.spool_max < 1:
        raise ZsadEdgeError("--settle-s, --min-free-mb and --drain-s must be >= 0 and --spool-max >= 1")
    for flag in ("keep_days", "max_disk_gb", "events_rotate_mb"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ZsadEdgeError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    for flag in ("stall_s", "save_rate", "mqtt_rate", "webhook_rate", "video_segment_s"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ZsadEdgeError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    if args.status_s < 0:
        raise ZsadEdgeError("--status-s must be >= 0")
    if args.ui_fps <= 0 or args.ui_keep < 1:
        raise ZsadEdgeError("--ui-fps must be > 0 and --ui-keep at least 1")
    if args.ui_token:  # read now (and masked from then on), checked with the address before any frame
        args.ui_token = expand(args.ui_token, "--ui-token")
        remember(args.ui_token)
    if args.ui:
        check_binding(parse_address(args.ui)[0], args.ui_token)


def open_sources(args: argparse.Namespace) -> list[FrameSource]:
    options = {"queue_size": args.queue_size, "stride": args.stride, "max_fps": args.max_fps, "stall_s": args.stall_s}
    folder_options = {
        "state_folder": args.out / "state",
        "settle_s": args.settle_s,
        "processed": args.processed,
        "done_markers": args.done_markers,
        "part_id": args.part_id,
    }
    sources = []
    try:
        for index, spec in enumerate(args.sources):
            source = open_source(spec, index, args.follow, args.loop, args.realtime, folder_options, **options)
            sources.append(source)
    except BaseException:
        for source in sources:
            source.close()
        raise
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise ZsadEdgeError(f"source names must differ, got {names}: name them with NAME=URI")
    return sources


def open_sinks(
    args: argparse.Namespace, detector, record: dict, sources: list[FrameSource], run_id: str, recorded: list[dict]
) -> list[QueuedSink]:
    """The sinks asked for, each checked now (a broker is connected to) rather than at the first anomaly.
    recorded: the end of the event log (what a killed run spooled without its event is forgotten)."""
    sinks: list[QueuedSink] = []
    files = {"run_id": run_id, "guard": DiskGuard(args.out, int(args.min_free_mb * 1e6))}
    scoring = (detector.scoring, record["thresholds"])
    try:
        if args.save != "none":
            sinks.append(FrameImageSink(args.out / "frames", *scoring, args.save, rate_per_s=args.save_rate, **files))
        if args.video:
            fps = {source.name: source.fps for source in sources}
            sinks.append(VideoSink(args.out / "video", *scoring, fps, segment_s=args.video_segment_s, **files))
        if args.mqtt:
            tls_files = {"ca_file": args.mqtt_ca, "cert_file": args.mqtt_cert, "key_file": args.mqtt_key}
            target = MqttTarget.parse(args.mqtt, args.mqtt_username, **tls_files)
            spool = Spool(args.out / "spool" / "mqtt.sqlite", args.spool_max)
            sinks.append(MqttSink(target, spool=spool, recorded=recorded, rate_per_s=args.mqtt_rate))
        if args.webhook:
            headers = dict(parse_header(header) for header in args.webhook_header)
            spool = Spool(args.out / "spool" / "webhook.sqlite", args.spool_max)
            rate = args.webhook_rate
            sinks.append(WebhookSink(args.webhook, headers=headers, spool=spool, recorded=recorded, rate_per_s=rate))
        if args.opcua:
            sinks.append(OpcUaSink(args.opcua, parse_mapping(args.opcua_node, OPCUA_FIELDS, "--opcua-node")))
        if args.modbus:
            layout = ModbusLayout.parse(args.modbus_map, args.modbus_unit, args.modbus_pulse_ms)
            sinks.append(ModbusSink(args.modbus, layout))
    except BaseException:
        close_sinks(sinks, 0.0)
        raise
    return sinks


def check_config(args: argparse.Namespace, rules: dict[str, SourceRules]) -> int:
    """--check-config: everything that can be checked without opening a source or the model."""
    if not args.server:
        load_manifest(args.bundle, verify_hashes=False)
    names = [split_spec(spec, index)[0] for index, spec in enumerate(args.sources)]
    for spec in args.sources:
        expand(spec, "source")  # credentials from the environment and files are there
    unknown = sorted(set(rules) - set(names))
    if unknown:
        raise ZsadEdgeError(f"rules for source(s) that are not run: {', '.join(unknown)}")
    sinks = [name for name in ("mqtt", "webhook", "opcua", "modbus") if getattr(args, name, None)]
    print(
        f"{args.config or 'arguments'}: OK: {len(names)} source(s) ({', '.join(names)}), "
        f"{sum(r.roi is not None for r in rules.values())} with a region of interest, "
        f"sinks: {', '.join(sinks) or 'none'}; bundle {args.bundle}"
    )
    return 0


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    rules = _settle_arguments(args)
    apply_trusted_keys(args)  # --config may name them
    if args.check_config:
        return check_config(args, rules)
    started = time.monotonic()
    run_id = new_run_id()
    rotate = int(args.events_rotate_mb * 1e6)
    with EventLog(args.out / "events.jsonl", args.events == "anomalies", rotate_bytes=rotate) as log:
        sources = open_sources(args)
        recorded = [event for path in [*log.rotated()[-1:], log.path] for event in tail_events(path)]
        reconcile(sources, recorded)
        detector, record = _open_model(args)
        load_s = time.monotonic() - started
        trigger = open_part_trigger(args.part_trigger, args.part_trigger_node) if args.part_trigger else None
        sinks = open_sinks(args, detector, record, sources, run_id, recorded)
        view = None
        if args.ui:  # a sink like the others, its server started with the watchers
            names = [source.name for source in sources]
            view = LiveView(names, detector.scoring, record["thresholds"], args.ui_fps, args.ui_keep)
            sinks.append(view)
        station = Station(
            detector, sources, args.batch_size, args.max_wait_ms, sinks, on_event=log.write, run_id=run_id,
            rules=rules, part_ids=trigger.part_for if trigger else None, record=record,
        )  # fmt: skip
        station.monitored["events"] = log
        watchers: list[MetricsServer | UiServer | StatusLine | Retention | Watchdog | PartTrigger | Rollout] = []
        watchers += [trigger] if trigger else []
        rollout = _rollout(args, station)
        watchers += [rollout.start()] if rollout else []
        interrupted = False
        try:
            if args.metrics_port is not None:
                watchers.append(MetricsServer(station, args.metrics_port, args.metrics_host))
            if view is not None:
                watchers.append(UiServer(station, view, args.out, *parse_address(args.ui), args.ui_token))
            if args.status_s:
                watchers.append(StatusLine(station.stats, args.status_s).start())
            max_disk = int(args.max_disk_gb * 1e9) if args.max_disk_gb else None
            watchers.append(Retention(args.out, args.keep_days, max_disk, report=station.report).start())
            station.start()
            watchers.append(Watchdog(Notifier(), lambda: station.heartbeat, lambda: _brief(station)).start())
            _run_until_done(station, stop, log.retry)
        except KeyboardInterrupt:  # a second signal: leave now, abandoning what the sinks still hold
            interrupted = True
            raise
        finally:
            for watcher in watchers:
                watcher.close()
            if not interrupted:
                close_sinks(sinks, args.drain_s)
            if isinstance(detector, RemoteDetector):
                detector.close()
        summary = _summary(station, stop, load_s, sinks, log, rollout)
    _write_summary(args.out, summary)
    print(
        f"{summary['processed']} frame(s) from {len(sources)} source(s), {summary['anomalies']} anomalous, "
        f"{summary['dropped']} dropped, {summary['frames_per_s']} frames/s; events in {log.path}"
        + (f" ({summary['stopped']})" if summary["stopped"] else ""),
        file=sys.stdout,
    )
    return 0


def _open_model(args: argparse.Namespace) -> tuple[Detector | RemoteDetector, dict]:
    """The local detector, or with --server the served model (checked now: the server answers)."""
    if args.server:
        detector = RemoteDetector(args.server, str(args.bundle), concurrency=args.batch_size)
        return detector, {**detector.record, "server": masked(args.server)}
    detector = open_detector(args.bundle, args.backend, args.memory_bank, precision=args.precision, device=args.device)
    return detector, run_record(detector, args.bundle, args.precision, args.memory_bank)


def _rollout(args: argparse.Namespace, station: Station) -> Rollout | None:
    """Watch the bundle for new versions (a local model only: a server owns its bundle)."""
    if args.server or not args.rollout_check_s:
        return None

    def open_version(folder: Path):
        detector = open_detector(folder, args.backend, args.memory_bank, precision=args.precision, device=args.device)
        return detector, run_record(detector, folder, args.precision, args.memory_bank)

    return Rollout(args.bundle, open_version, station, args.rollout_check_s, args.rollout_settle_s)


def _summary(
    station: Station, stop: StopRequest, load_s: float, sinks: list[QueuedSink], log, rollout: Rollout | None
) -> dict:
    stopped = f"stopped by {stop.signal_name}" if stop.requested else None
    summary = {
        "run_id": station.run_id,
        **station.stats.summary(stopped),
        "load_s": round(load_s, 3),
        "sinks": {sink.kind: sink.counts() for sink in sinks},
        "events_log": {**log.state(), "torn_bytes_set_aside": log.torn_bytes},
        "run": station.current.record,  # after a rollout: the bundle running at the end
        **({"rollout": rollout.counts} if rollout else {}),
    }
    return json.loads(masked(json.dumps(summary)))


def _write_summary(out: Path, summary: dict) -> None:
    """OUT/runs/RUN.json for every run (none is replaced), and OUT/summary.json: the latest run's."""
    data = (json.dumps(summary, indent=2) + "\n").encode()
    try:
        write_bytes_atomic(out / "runs" / f"{summary['run_id']}.json", data)
        write_bytes_atomic(out / "summary.json", data)
    except OSError as exc:
        raise ZsadEdgeError(f"the run ended but its summary could not be written to {out}: {exc.strerror}") from None


def _brief(station: Station) -> str:
    """One line for systemd's STATUS=."""
    counts = station.stats.per_source().values()
    return f"{sum(c['processed'] for c in counts)} frame(s), {sum(c['anomalies'] for c in counts)} anomalous"


def _run_until_done(station: Station, stop: StopRequest, tick) -> None:
    """Wait until every source has ended, or a stop request and the frames in flight are done; `tick`
    every POLL_S (the event log retries what a full disk held back).

    A second signal raises KeyboardInterrupt here: the station is abandoned at once."""
    try:
        while not station.join(POLL_S):
            tick()
            if stop.requested:
                station.stop()
    finally:
        station.close()
