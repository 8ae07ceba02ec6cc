"""The camera station: is everything but the model hidden behind the model, and does it run flat?

1. throughput: a video of --frames frames (a moving synthetic part, 640x480) through the station
   in three configurations, interleaved round by round: events.jsonl only; plus the annotated
   video and defect images; plus the operator page (`watch --ui`) with two pages attached. Each
   is compared with the model-only ceiling (batch / median time of the model call: encoder,
   heads, map stages) at the same batch size, measured in the same run between the station runs.
   Ratio 1.0: capture, decoding, pre/post-processing and sinks cost the line nothing. The pages
   are separate processes doing what the page's script does (--pages http): follow the live
   state stream and fetch every newly drawn picture and anomaly thumbnail; or, with --pages
   chromium, two headless Chromium browsers showing the page (which then also compete for the
   CPU with their own rendering).
2. soak: --soak-frames frames of a looping video through a tiny model with every file sink on;
   resident memory, open files and threads sampled as it runs (growth after warm-up), and the p99
   latency of the first and last 1,000 frames.

  python benchmarks/station.py                                  # ViT-B-16 @ 224, batch 1, 300 frames
  python benchmarks/station.py --batch-size 4 --frames 400
  python benchmarks/station.py --skip-soak --out benchmarks/results/station.json
  python benchmarks/station.py --skip-soak --rounds 3 --pages chromium
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import cv2
import numpy as np

from zsad_edge.benchmarks.reports import machine_info, random_bundle, write_report
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.image_io import read_image
from zsad_edge.runtime.station.events import EventLog
from zsad_edge.runtime.station.sinks import FrameImageSink, VideoSink
from zsad_edge.runtime.station.sources import VideoFileSource
from zsad_edge.runtime.station.station import Station, watch
from zsad_edge.runtime.station.ui.live import LiveView
from zsad_edge.runtime.station.ui.server import UiServer

THRESHOLDS = {"calibrated": False, "source": "bundle"}
WINDOW = 1000  # frames compared at the start and the end of the soak
SAMPLE_EVERY = 500
CONFIGURATIONS = ("events", "events+video+images", "events+page")
PAGES = 2


def moving_part_video(path: Path, frames: int, size: tuple[int, int] = (640, 480)) -> Path:
    """The demo's brushed plate with its scratch, sliding across the frame as on a conveyor."""
    from zsad_edge.export.demo import synthetic_part

    plate = cv2.cvtColor(read_image(synthetic_part(path.with_suffix(".png"))), cv2.COLOR_GRAY2BGR)
    plate = cv2.resize(plate, (size[0] // 2, size[1] // 2))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    for index in range(frames):
        canvas = np.full((size[1], size[0], 3), 40, np.uint8)
        x = index * 7 % (size[0] - plate.shape[1])
        canvas[size[1] // 4 : size[1] // 4 + plate.shape[0], x : x + plate.shape[1]] = plate
        writer.write(canvas)
    writer.release()
    return path


def model_ceiling(detector: Detector, video: Path, batch_size: int, runs: int) -> list[float]:
    """Seconds per frame of the model call alone (encoder, heads, map stages), `runs` samples."""
    capture = cv2.VideoCapture(str(video))
    frames = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(batch_size)]
    capture.release()
    batch, _ = detector.preprocess(frames)
    detector.infer(batch)
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        detector.infer(batch)
        detector.synchronize()
        samples.append((time.perf_counter() - began) / batch_size)
    return samples


def station_run(detector: Detector, video: Path, batch_size: int, folder: Path, configuration: str, pages: str) -> dict:
    """Frames per second of one station run over the whole video, and its latency percentiles."""
    sinks: list = []
    if configuration == "events+video+images":
        sinks = [
            VideoSink(folder / "video", detector.scoring, THRESHOLDS, {"line": 25.0}),
            FrameImageSink(folder / "frames", detector.scoring, THRESHOLDS, "anomalies", rate_per_s=1.0),
        ]
    if configuration == "events+page":
        sinks = [LiveView(["line"], detector.scoring, {**THRESHOLDS, "image": detector.scoring["image_threshold"]})]
    latencies: list[float] = []
    with EventLog(folder / "events.jsonl") as log:

        def take(event: dict, receipt=None) -> None:
            log.write(event, receipt)
            if event["event"] == "frame":
                latencies.append(event["latency_ms"])

        station = Station(detector, [VideoFileSource("line", video)], batch_size, sinks=sinks, on_event=take)
        server = UiServer(station, sinks[0], folder, "127.0.0.1", 0, None) if configuration == "events+page" else None
        attached = Pages(server.url, pages) if server else None
        began = time.perf_counter()
        station.start()
        station.join()
        elapsed = time.perf_counter() - began
        station.close()
        fetched = attached.detach() if attached else None
        if server:
            server.close()
    for sink in sinks:
        sink.close()
    return {
        "frames": len(latencies),
        "frames_per_s": len(latencies) / elapsed,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "sinks": {sink.kind: sink.counts() for sink in sinks},
        **({"pages": fetched} if fetched is not None else {}),
    }


class Pages:
    """PAGES clients on the operator page, each in its own process, until `detach()` (which returns
    what each fetched)."""

    def __init__(self, url: str, kind: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop, self.results = context.Event(), context.Queue()
        follow = follow_in_chromium if kind == "chromium" else follow_over_http
        self.processes = [context.Process(target=follow, args=(url, self.stop, self.results)) for _ in range(PAGES)]
        for process in self.processes:
            process.start()
        for _ in self.processes:
            self.results.get(timeout=120)  # "ready": each has the page open

    def detach(self) -> list[dict]:
        self.stop.set()
        fetched = [self.results.get(timeout=120) for _ in self.processes]
        for process in self.processes:
            process.join(30)
        return fetched


def follow_over_http(url: str, stop, results) -> None:
    """What the page's script does: follow /api/updates, fetch each newly drawn picture and thumbnail."""
    shown: dict[str, int] = {}
    thumbnails: set[int] = set()
    counts = {"states": 0, "pictures": 0, "thumbnails": 0, "bytes": 0}
    with urllib.request.urlopen(url + "api/updates", timeout=60) as stream:
        results.put("ready")
        while not stop.is_set():
            line = stream.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            state = json.loads(line[6:])
            counts["states"] += 1
            for name, source in state["sources"].items():
                if source["drawn"] > shown.get(name, 0):
                    shown[name] = source["drawn"]
                    counts["bytes"] += len(urllib.request.urlopen(f"{url}api/frame/{name}", timeout=60).read())
                    counts["pictures"] += 1
            for entry in state["anomalies"]:
                if entry["drawn"] and entry["id"] not in thumbnails:
                    thumbnails.add(entry["id"])
                    picture = urllib.request.urlopen(f"{url}api/anomalies/{entry['id']}/thumbnail", timeout=60)
                    counts["bytes"] += len(picture.read())
                    counts["thumbnails"] += 1
    results.put(counts)


def follow_in_chromium(url: str, stop, results) -> None:
    """The page in headless Chromium (Selenium), counting the state updates it rendered."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(url)
        results.put("ready")
        stop.wait()
        updates = browser.execute_script("return Number(document.body.dataset.updates || 0)")
    finally:
        browser.quit()
    results.put({"states": updates})


def throughput(args: argparse.Namespace, scratch: Path) -> dict:
    built = random_bundle(args.arch, args.image_size, "aprilgan", scratch / "model")
    detector = Detector.from_bundle(built.path, backend="cpu")
    video = moving_part_video(scratch / "line.avi", args.frames)
    ceilings: list[float] = []
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGURATIONS}
    for round_index in range(args.rounds):
        for name in runs:
            ceilings += model_ceiling(detector, video, args.batch_size, args.ceiling_runs)
            folder = scratch / f"{name}{round_index}"
            runs[name].append(station_run(detector, video, args.batch_size, folder, name, args.pages))
    ceilings += model_ceiling(detector, video, args.batch_size, args.ceiling_runs)
    ceiling_fps = 1.0 / float(np.median(ceilings))
    rows = {}
    for name, results in runs.items():
        rates = [r["frames_per_s"] for r in results]
        fps = float(np.median(rates))
        rows[name] = {
            "frames_per_s": fps, "spread_frames_per_s": [min(rates), max(rates)],
            "ratio_to_ceiling": fps / ceiling_fps, "runs": results,
        }  # fmt: skip
    page_cost = 1.0 - rows["events+page"]["frames_per_s"] / rows["events"]["frames_per_s"]
    print(f"\nthroughput: {args.arch} @ {args.image_size}, batch {args.batch_size}, {args.frames} frames 640x480")
    print(f"  model-only ceiling   {ceiling_fps:7.2f} frames/s  (IQR of s/frame "
          f"{np.percentile(ceilings, 25):.4f}-{np.percentile(ceilings, 75):.4f})")  # fmt: skip
    for name, row in rows.items():
        low, high = row["spread_frames_per_s"]
        print(f"  station, {name:22s} {row['frames_per_s']:7.2f} frames/s  = {row['ratio_to_ceiling']:.3f} x ceiling"
              f"  (runs {low:.2f}-{high:.2f})")  # fmt: skip
    print(f"  the page with {PAGES} {args.pages} pages attached costs {100 * page_cost:+.1f} % of the events-only rate")
    return {"ceiling_frames_per_s": ceiling_fps, "ceiling_s_per_frame": ceilings, "station": rows,
            "page_cost_fraction": page_cost, "pages": {"count": PAGES, "kind": args.pages}}  # fmt: skip


def process_sample() -> dict:
    """Resident memory (MB), open file descriptors and threads of this process."""
    status = Path("/proc/self/status").read_text().splitlines()
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {
        "rss_mb": rss_kb / 1024,
        "open_files": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
    }


def soak(args: argparse.Namespace, scratch: Path) -> dict:
    from zsad_edge.export.build import build_bundle
    from zsad_edge.export.demo import demo_config

    built = build_bundle(demo_config(scratch / "tiny", overwrite=False))
    detector = Detector.from_bundle(built.path, backend="cpu")
    video = moving_part_video(scratch / "soak.avi", 200, size=(320, 240))
    sinks = [
        VideoSink(scratch / "soak_video", detector.scoring, THRESHOLDS, {"line": 25.0}),
        FrameImageSink(scratch / "soak_frames", detector.scoring, THRESHOLDS, "anomalies", rate_per_s=1.0),
    ]
    source = VideoFileSource("line", video, loop=True)
    latencies, samples = [], []
    began = time.perf_counter()
    with EventLog(scratch / "soak_events.jsonl") as log:
        events = watch(detector, [source], batch_size=args.batch_size, sinks=sinks)
        for event in events:
            log.write(event)
            latencies.append(event["latency_ms"])
            if len(latencies) % SAMPLE_EVERY == 0:
                samples.append({"frames": len(latencies), **process_sample()})
            if len(latencies) >= args.soak_frames:
                events.close()
    elapsed = time.perf_counter() - began
    for sink in sinks:
        sink.close()
    warm = next(s for s in samples if s["frames"] >= WINDOW)
    last = samples[-1]
    first_p99, last_p99 = (float(np.percentile(part, 99)) for part in (latencies[:WINDOW], latencies[-WINDOW:]))
    result = {
        "frames": len(latencies),
        "frames_per_s": len(latencies) / elapsed,
        "rss_growth_mb": last["rss_mb"] - warm["rss_mb"],
        "open_files_growth": last["open_files"] - warm["open_files"],
        "threads_growth": last["threads"] - warm["threads"],
        "p99_first_ms": first_p99,
        "p99_last_ms": last_p99,
        "p99_last_over_first": last_p99 / first_p99,
        "samples": samples,
    }
    print(
        f"\nsoak: {result['frames']} frames, tiny model, events + video + images, {result['frames_per_s']:.1f} frames/s"
    )
    print(f"  resident memory {warm['rss_mb']:.1f} MB after {warm['frames']} frames -> {last['rss_mb']:.1f} MB "
          f"(growth {result['rss_growth_mb']:+.1f} MB); open files {result['open_files_growth']:+d}, "
          f"threads {result['threads_growth']:+d}")  # fmt: skip
    print(f"  p99 latency first {WINDOW}: {first_p99:.1f} ms, last {WINDOW}: {last_p99:.1f} ms "
          f"(x{result['p99_last_over_first']:.3f})")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--frames", type=int, default=300, help="video length for the throughput runs")
    parser.add_argument("--rounds", type=int, default=1, help="station runs per configuration (median)")
    parser.add_argument("--ceiling-runs", type=int, default=15, help="model-only samples before each station run")
    parser.add_argument(
        "--pages", choices=("http", "chromium"), default="http", help="what is attached to the operator page"
    )
    parser.add_argument("--soak-frames", type=int, default=10_000)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-soak", action="store_true")
    parser.add_argument("--out", type=Path, help="JSON path (default ./station.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    report = {"benchmark": "station", "arguments": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as scratch:
        if not args.skip_throughput:
            report["throughput"] = throughput(args, Path(scratch))
        if not args.skip_soak:
            report["soak"] = soak(args, Path(scratch))
    report["machine"] = machine_info()
    write_report(report, args.out, "station")
    return 0


if __name__ == "__main__":
    sys.exit(main())
