"""`zsad-edge watch`: run a station on live and recorded sources; events.jsonl and summary.json in --out.

Sources are `[name=]URI`: a video file, an image folder (`--follow` keeps watching it for new
files, each taken exactly once, also across restarts), a camera number or /dev/videoN, an
rtsp:// or http(s):// stream, or gst:PIPELINE. Live sources drop their oldest frames when the
detector falls behind; files and folders never drop. SIGINT/SIGTERM stops capture, processes the
frames already queued, writes the summary and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import ZsadEdgeError
from ..image_io import write_bytes_atomic
from ..station.events import EventLog, summarise
from ..station.loop import watch
from ..station.sinks import DefectImageSink
from ..station.sources import open_source
from ..stopping import StopRequest
from .common import backend_arguments, open_detector
from .detect import run_record

HELP = "run a station: cameras, streams, video files and drop folders in; a verdict per frame out"
PARENTS = (backend_arguments(),)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "sources", nargs="+", help="[name=]URI: video file, image folder, camera, rtsp/http URL, gst:..."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for events.jsonl and summary.json")
    parser.add_argument("--memory-bank", type=Path, help="few-shot: a bank written by `zsad-edge fit-normal`")
    parser.add_argument("--batch-size", type=int, default=1, help="frames per model call, across sources")
    parser.add_argument("--max-wait-ms", type=float, default=20.0, help="longest wait to fill a batch")
    parser.add_argument("--queue-size", type=int, default=4, help="frames each source may hold")
    parser.add_argument("--stride", type=int, default=1, help="keep every Nth frame of each source")
    parser.add_argument("--max-fps", type=float, help="keep at most this many frames per second per source")
    parser.add_argument("--loop", action="store_true", help="video files: start again at the end")
    parser.add_argument("--realtime", action="store_true", help="video files: deliver at the file's own frame rate")
    parser.add_argument("--follow", action="store_true", help="image folders: keep taking new files as they arrive")
    parser.add_argument(
        "--save-defects",
        action="store_true",
        help="write the overlay of every anomalous frame to OUT/defects/SOURCE/FRAME.png (a sink that "
        "drops its oldest pending image, counted, rather than slow the line)",
    )


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    if args.batch_size < 1 or args.max_wait_ms < 0:
        raise ZsadEdgeError("--batch-size must be at least 1 and --max-wait-ms at least 0")
    options = {"queue_size": args.queue_size, "stride": args.stride, "max_fps": args.max_fps}
    sources = [
        open_source(
            spec, index, state_folder=args.out, follow=args.follow, loop=args.loop, realtime=args.realtime, **options
        )
        for index, spec in enumerate(args.sources)
    ]
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise ZsadEdgeError(f"source names must differ, got {names}: name them with NAME=URI")
    started = time.monotonic()
    detector = open_detector(args.bundle, args.backend, args.memory_bank, precision=args.precision)
    load_s = time.monotonic() - started
    sinks = []
    if args.save_defects:
        thresholds = run_record(detector, args.bundle, args.precision, args.memory_bank)["thresholds"]
        sinks.append(DefectImageSink(args.out / "defects", detector.scoring, thresholds))
    with EventLog(args.out / "events.jsonl") as log:
        try:
            for event in watch(detector, sources, args.batch_size, args.max_wait_ms, stop, sinks):
                log.write(event)
        finally:
            for sink in sinks:
                sink.close()
    stopped = f"stopped by {stop.signal_name}" if stop.requested else None
    summary = {**summarise(sources, log, time.monotonic() - started - load_s, stopped), "load_s": round(load_s, 3)}
    if args.save_defects:
        summary["defect_images"] = sinks[0].counts()
    write_bytes_atomic(args.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    dropped = sum(s["dropped"] for s in summary["sources"].values())
    anomalies = sum(s["anomalies"] for s in summary["sources"].values())
    print(
        f"{summary['processed']} frame(s) from {len(sources)} source(s), {anomalies} anomalous, {dropped} dropped, "
        f"{summary['frames_per_s']} frames/s; events in {args.out / 'events.jsonl'}"
        + (f" ({stopped})" if stopped else ""),
        file=sys.stdout,
    )
    return 0
