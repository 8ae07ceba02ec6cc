"""The camera station (first slice of issue 15): sources with exact counts, batching, events, stopping."""

import json
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT

from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.station.events import EventLog, summarise
from zsad_edge.runtime.station.loop import watch
from zsad_edge.runtime.station.sources import FolderSource, FrameSource, VideoFileSource, open_source
from zsad_edge.runtime.stopping import StopRequest

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]


def _video(path, frames=25, size=(64, 48)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    writer.release()
    return path


class Burst(FrameSource):
    """A live source that captures `count` frames as fast as it can, then ends."""

    live = True

    def __init__(self, name, count, **options):
        super().__init__(name, **options)
        self.count = count

    def read(self):
        for index in range(self.count):
            yield np.full((32, 32, 3), index % 255, np.uint8), f"burst#{index}"


class Slow:
    """A detector that takes its time, so a live source outruns it."""

    def __init__(self, detector, seconds):
        self.detector, self.seconds = detector, seconds

    def detect_batch(self, images):
        time.sleep(self.seconds)
        return self.detector.detect_batch(images)


def test_a_video_file_gives_one_event_per_frame_in_order_and_never_drops(tiny_detector, tmp_path):
    source = VideoFileSource("line1", _video(tmp_path / "part.avi"), queue_size=2)
    events = list(watch(Slow(tiny_detector, 0.005), [source], batch_size=3))
    assert [e["frame"] for e in events] == list(range(25))
    assert (source.counts.captured, source.counts.dropped, source.counts.skipped) == (25, 0, 0)
    assert {"score", "is_anomalous", "latency_ms", "origin"} <= set(events[0]) and events[0]["origin"] == "part.avi#0"


def test_a_live_source_drops_only_its_oldest_frames_and_counts_them(tiny_detector):
    source = Burst("cam", 60, queue_size=3)
    events = list(watch(Slow(tiny_detector, 0.02), [source], batch_size=1))
    indices = [e["frame"] for e in events]
    assert indices == sorted(indices) and indices[-1] == 59  # newest kept, order preserved
    counts = source.counts
    assert counts.captured == 60 and counts.skipped == 0
    assert counts.dropped == 60 - len(events) > 0  # every missing frame is a counted drop


def test_two_sources_are_batched_together_and_keep_their_own_order(tiny_detector, tmp_path):
    first = VideoFileSource("a", _video(tmp_path / "a.avi", frames=12))
    second = VideoFileSource("b", _video(tmp_path / "b.avi", frames=7))
    events = list(watch(tiny_detector, [first, second], batch_size=4, max_wait_ms=50))
    for name, frames in (("a", 12), ("b", 7)):
        assert [e["frame"] for e in events if e["source"] == name] == list(range(frames))


def test_a_drop_folder_takes_each_complete_file_once_also_after_a_restart(tiny_detector, tmp_path):
    folder, state = tmp_path / "drop", tmp_path / "state.json"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"a{i}.png"), np.full((20, 30), 60 * i, np.uint8))
    (folder / "broken.png").write_bytes(b"not a png")
    stop = StopRequest()

    def arrive():
        time.sleep(0.4)
        cv2.imwrite(str(folder / "b0.png"), np.zeros((20, 30), np.uint8))
        time.sleep(1.2)
        stop.signal = signal.SIGINT

    threading.Thread(target=arrive, daemon=True).start()
    source = FolderSource("drop", folder, follow=True, state_file=state, settle_s=0.2, poll_s=0.05)
    events = list(watch(tiny_detector, [source], stop=stop))
    assert [e["origin"] for e in events] == ["a0.png", "a1.png", "b0.png"]
    assert source.counts.skipped == 1 and "broken.png" in source.counts.skipped_items[0]
    cv2.imwrite(str(folder / "c0.png"), np.zeros((20, 30), np.uint8))
    again = FolderSource("drop", folder, follow=False, state_file=state)
    assert [e["origin"] for e in watch(tiny_detector, [again])] == ["c0.png"]


def test_summary_counts_add_up(tiny_detector, tmp_path):
    source = Burst("cam", 30, queue_size=2)
    with EventLog(tmp_path / "events.jsonl") as log:
        for event in watch(Slow(tiny_detector, 0.01), [source]):
            log.write(event)
    summary = summarise([source], log, 1.0, None)["sources"]["cam"]
    assert summary["captured"] == summary["processed"] + summary["dropped"] + summary["skipped"] == 30
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == summary["processed"] and all(json.loads(line)["source"] == "cam" for line in lines)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("frames.xyz", "unknown source 'frames.xyz'"),
        ("gst:videotestsrc ! appsink", "no GStreamer support"),
        ("7", "cannot open '7'"),
    ],
)
def test_bad_sources_are_refused_before_any_frame(spec, message):
    if spec.startswith("gst:") and "GStreamer:                   YES" in cv2.getBuildInformation():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(ZsadEdgeError, match=message):
        open_source(spec, 0)


def test_watch_cli_stops_on_sigint_with_complete_events_and_summary(tiny_built, tmp_path):
    video, out = _video(tmp_path / "line.avi", frames=10), tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "watch", str(tiny_built.path), f"line1={video}", "--loop", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    events = out / "events.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not events.is_file() or len(events.read_text().splitlines()) < 15):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr
    lines = [json.loads(line) for line in events.read_text().splitlines()]  # every line whole
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "stopped by SIGINT" and summary["processed"] == len(lines) >= 15
    assert summary["sources"]["line1"]["dropped"] == 0 and "stopped by SIGINT" in stdout


def test_watch_cli_bad_input_is_one_error_line(tiny_built, tmp_path):
    proc = subprocess.run(
        [*CLI, "watch", str(tiny_built.path), "nothing.xyz", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: unknown source 'nothing.xyz'"
    )


class Flaky(FrameSource):
    """A live source that loses its stream after 5 frames, twice; the first reopen fails."""

    live = True
    reconnects = True
    backoff_s = 0.02

    def __init__(self, name, **options):
        super().__init__(name, **options)
        self.rounds, self.reopens = 0, 0

    def read(self):
        self.rounds += 1
        for index in range(5 if self.rounds <= 2 else 1000):
            time.sleep(0.002)
            yield np.full((24, 24, 3), 100, np.uint8), f"flaky#{self.rounds}.{index}"

    def reopen(self):
        self.reopens += 1
        if self.reopens == 1:
            raise ZsadEdgeError("camera still rebooting")


def test_a_lost_source_is_reopened_while_the_others_keep_running(tiny_detector, tmp_path):
    flaky, steady = Flaky("cam", queue_size=8), VideoFileSource("line", _video(tmp_path / "v.avi", frames=20))
    stop, seen, deadline = StopRequest(), [], time.monotonic() + 60
    for event in watch(tiny_detector, [flaky, steady], batch_size=2, stop=stop):
        seen.append(event)
        reconnected = sum(e["event"] == "source_up" for e in seen) == 2 and sum(e["source"] == "cam" for e in seen) > 20
        if reconnected or time.monotonic() > deadline:
            stop.signal = signal.SIGINT
    statuses = [(e["event"], e["source"]) for e in seen if e["event"] != "frame"]
    assert statuses == [("source_down", "cam"), ("source_up", "cam")] * 2 and flaky.reopens == 3
    assert [e["frame"] for e in seen if e["source"] == "line"] == list(range(20))  # never held up
    cam_frames = [e["frame"] for e in seen if e["event"] == "frame" and e["source"] == "cam"]
    assert cam_frames == sorted(cam_frames) and max(cam_frames) >= 10  # frames after both reconnects


def test_a_slow_sink_drops_its_oldest_images_and_never_slows_the_line(tiny_built, tmp_path):
    from zsad_edge.runtime.detector import Detector
    from zsad_edge.runtime.station.sinks import DefectImageSink

    detector = Detector.from_bundle(tiny_built.path)
    detector.image_threshold = -1.0  # every frame anomalous: the sink gets all of them

    class SlowDisk(DefectImageSink):
        def write(self, frame, result):
            time.sleep(0.3)
            super().write(frame, result)

    sink = SlowDisk(tmp_path / "defects", detector.scoring, {"calibrated": False, "source": "bundle"}, queue_size=2)
    started = time.monotonic()
    events = list(watch(detector, [VideoFileSource("line", _video(tmp_path / "v.avi", frames=30))], sinks=[sink]))
    line_time = time.monotonic() - started
    sink.close()
    assert len(events) == 30 and line_time < 30 * 0.3 / 2  # the line did not wait for the disk
    counts = sink.counts()
    assert counts["written"] + counts["dropped"] == 30 and counts["dropped"] > 0
    written = sorted(p.name for p in (tmp_path / "defects" / "line").iterdir())
    assert len(written) == counts["written"] and written[-1] == "00000029.png"  # the newest kept
