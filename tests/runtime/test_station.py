"""The camera station's core: sources with exact counts, stall and loss recovery, batching across
sources on three overlapping threads, events, the Station object and its stats."""

import json
import signal
import threading
import time

import cv2
import numpy as np
import pytest
from station_helpers import Burst, Slow, write_video

from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.regions import anomalous_regions
from zsad_edge.runtime.station.drop_folder import DropFolder
from zsad_edge.runtime.station.events import EventLog
from zsad_edge.runtime.station.opening import open_source
from zsad_edge.runtime.station.sources import FrameSource, VideoFileSource
from zsad_edge.runtime.station.station import Station, watch
from zsad_edge.runtime.stopping import StopRequest


def test_a_video_file_gives_one_event_per_frame_in_order_and_never_drops(tiny_detector, tmp_path):
    source = VideoFileSource("line1", write_video(tmp_path / "part.avi"), queue_size=2)
    events = list(watch(Slow(tiny_detector, 0.005), [source], batch_size=3))
    assert [e["frame"] for e in events] == list(range(25))
    assert (source.counts.captured, source.counts.dropped, source.counts.skipped) == (25, 0, 0)
    assert events[0]["origin"] == "part.avi#0" and source.fps == pytest.approx(10.0)


def test_a_frame_event_says_what_an_operator_needs(tiny_detector, tmp_path):
    source = VideoFileSource("line1", write_video(tmp_path / "part.avi", frames=3))
    event = list(watch(tiny_detector, [source]))[0]
    assert {"score", "is_anomalous", "map_max", "map_mean", "mask_fraction", "regions", "regions_total"} <= set(event)
    assert set(event["stages_ms"]) == {"wait", "preprocess", "infer", "postprocess"}
    assert event["latency_ms"] >= event["stages_ms"]["infer"] > 0
    assert event["source_dropped"] == 0 and event["captured_monotonic"] <= time.monotonic()


def test_regions_are_listed_largest_first_with_boxes_and_areas():
    mask = np.zeros((40, 60), bool)
    mask[2:4, 3:6] = True  # 2 x 3
    mask[10:20, 30:50] = True  # 10 x 20
    regions, total = anomalous_regions(mask)
    assert total == 2 and regions == [{"box": [30, 10, 20, 10], "area": 200}, {"box": [3, 2, 3, 2], "area": 6}]


def test_a_live_source_drops_only_its_oldest_frames_and_counts_them(tiny_detector):
    source = Burst("cam", 60, queue_size=3)
    events = list(watch(Slow(tiny_detector, 0.02), [source], batch_size=1))
    indices = [e["frame"] for e in events]
    assert indices == sorted(indices) and indices[-1] == 59  # newest kept, order preserved
    counts = source.counts
    assert counts.captured == 60 and counts.skipped == 0
    assert counts.dropped == 60 - len(events) > 0  # every missing frame is a counted drop
    assert [e["source_dropped"] for e in events] == sorted(e["source_dropped"] for e in events)


def test_two_sources_are_batched_together_and_keep_their_own_order(tiny_detector, tmp_path):
    first = VideoFileSource("a", write_video(tmp_path / "a.avi", frames=12))
    second = VideoFileSource("b", write_video(tmp_path / "b.avi", frames=7))
    events = list(watch(tiny_detector, [first, second], batch_size=4, max_wait_ms=50))
    for name, frames in (("a", 12), ("b", 7)):
        assert [e["frame"] for e in events if e["source"] == name] == list(range(frames))


class Rendezvous:
    """A detector whose stages meet: the first `calls` model calls each wait (up to 10 s) until a
    preprocessing call has begun while it was in hand, and preprocessing calls (after the first)
    wait until a model call not yet met is in hand. With the prepare and infer threads side by side
    every meeting happens; with the stages taking turns on one thread none can, and each wait times
    out. The order of events decides the outcome, not how fast a machine is."""

    def __init__(self, detector, calls):
        self.detector, self.calls = detector, calls
        self.threads = {"preprocess": set(), "infer": set()}
        self.preprocessed = self.entered = self.acknowledged = self.met = 0
        self.running = False
        self._changed = threading.Condition()

    def prepare(self, images):
        self.threads["preprocess"].add(threading.current_thread().name)
        with self._changed:
            self.preprocessed += 1
            unmet = lambda: self.running and self.entered > self.acknowledged  # noqa: E731
            if self.preprocessed > 1 and self.acknowledged < self.calls and self._changed.wait_for(unmet, 10):
                self.acknowledged = self.entered
                self._changed.notify_all()
        return self.detector.prepare(images)

    def run(self, batch):
        self.threads["infer"].add(threading.current_thread().name)
        with self._changed:
            self.entered += 1
            entry, self.running = self.entered, True
            self._changed.notify_all()
        out = self.detector.run(batch)
        with self._changed:
            if entry <= self.calls:
                self.met += self._changed.wait_for(lambda: self.acknowledged >= entry, 10)
            self.running = False
        return out

    def __getattr__(self, name):
        return getattr(self.detector, name)


def test_preprocessing_of_the_next_batch_overlaps_the_model_call(tiny_detector, tmp_path):
    rendezvous = Rendezvous(tiny_detector, calls=5)
    events = list(watch(rendezvous, [VideoFileSource("line", write_video(tmp_path / "v.avi", frames=20))]))
    assert len(events) == 20
    assert rendezvous.threads == {"preprocess": {"station-prepare"}, "infer": {"station-infer"}}
    assert rendezvous.met == 5  # each of the first 5 model calls saw the next batch being prepared


def test_a_drop_folder_takes_each_complete_file_once_also_after_a_restart(tiny_detector, tmp_path):
    folder, state = tmp_path / "drop", tmp_path / "state"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"a{i}.png"), np.full((20, 30), 60 * i, np.uint8))
    (folder / "broken.png").write_bytes(b"not a png" + b"IEND\xaeB`\x82")  # ends like a PNG, does not decode
    stop = StopRequest()

    def arrive():
        time.sleep(0.4)
        cv2.imwrite(str(folder / "b0.png"), np.zeros((20, 30), np.uint8))

    threading.Thread(target=arrive, daemon=True).start()
    source = DropFolder("drop", folder, follow=True, state_folder=state, settle_s=0.2, poll_s=0.05, retries=1)
    arrived = lambda seen: seen[-1]["origin"] == "b0.png"  # noqa: E731
    events = _until(watch(tiny_detector, [source], stop=stop), arrived, stop)
    assert [e["origin"] for e in events if e["event"] == "frame"] == ["a0.png", "a1.png", "b0.png"]
    assert source.counts.skipped == 1 and "broken.png" in source.counts.skipped_items[0]
    cv2.imwrite(str(folder / "c0.png"), np.zeros((20, 30), np.uint8))
    again = DropFolder("drop", folder, follow=False, state_folder=state)
    assert [e["origin"] for e in watch(tiny_detector, [again])] == ["c0.png"]


def test_the_station_object_starts_stops_and_counts(tiny_detector, tmp_path):
    source = Burst("cam", 10_000, every_s=0.002, queue_size=2)
    with EventLog(tmp_path / "events.jsonl") as log:
        station = Station(Slow(tiny_detector, 0.05), [source], on_event=log.write).start()
        while station.stats.per_source()["cam"]["processed"] < 10:
            time.sleep(0.01)
        station.stop()
        assert station.join(timeout=30) and not station.running
    summary = station.stats.summary()
    counts = summary["sources"]["cam"]
    assert counts["captured"] == counts["processed"] + counts["dropped"] + counts["skipped"] < 10_000
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(lines) == counts["processed"] and counts["dropped"] > 0
    assert {json.loads(line)["run"] for line in lines} == {station.run_id}
    assert Station(tiny_detector, [Burst("cam", 1)]).run_id != station.run_id  # a restart is told apart
    assert {"wait", "preprocess", "infer", "postprocess", "total"} == set(summary["latency_ms"])
    assert summary["latency_ms"]["total"]["p50"] <= summary["latency_ms"]["total"]["p99"]


def test_only_anomalies_are_written_when_asked(tiny_built, tmp_path):
    from zsad_edge.runtime.detector import Detector

    detector = Detector.from_bundle(tiny_built.path)
    scores = [e["score"] for e in watch(detector, [VideoFileSource("v", write_video(tmp_path / "v.avi"))])]
    detector.image_threshold = float(np.median(scores))
    with EventLog(tmp_path / "events.jsonl", only_anomalies=True) as log:
        for event in watch(detector, [VideoFileSource("v", write_video(tmp_path / "v.avi"))]):
            log.write(event)
    written = (tmp_path / "events.jsonl").read_text().splitlines()
    assert len(written) == sum(score > detector.image_threshold for score in scores) > 0


def test_a_failing_model_call_stops_the_station_with_its_error(tiny_detector, tmp_path):
    class Broken(Slow):
        def run(self, batch):
            raise RuntimeError("the accelerator fell off the bus")

    with pytest.raises(RuntimeError, match="fell off the bus"):
        list(watch(Broken(tiny_detector, 0), [VideoFileSource("v", write_video(tmp_path / "v.avi"))]))


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


def _until(events, condition, stop, timeout=60):
    """Collect events until condition(seen) holds (then stop), or the timeout."""
    seen, deadline = [], time.monotonic() + timeout
    for event in events:
        seen.append(event)
        if condition(seen) or time.monotonic() > deadline:
            stop.signal = signal.SIGINT
    return seen


def test_a_lost_source_is_reopened_while_the_others_keep_running(tiny_detector, tmp_path):
    flaky, steady = Flaky("cam", queue_size=8), VideoFileSource("line", write_video(tmp_path / "v.avi", frames=20))
    stop = StopRequest()

    def reconnected(seen):
        return sum(e["event"] == "source_up" for e in seen) == 2 and sum(e["source"] == "cam" for e in seen) > 20

    seen = _until(watch(tiny_detector, [flaky, steady], batch_size=2, stop=stop), reconnected, stop)
    statuses = [(e["event"], e["source"]) for e in seen if e["event"] != "frame"]
    assert statuses == [("source_down", "cam"), ("source_up", "cam")] * 2 and flaky.reopens == 3
    assert [e["frame"] for e in seen if e["source"] == "line"] == list(range(20))  # never held up
    cam_frames = [e["frame"] for e in seen if e["event"] == "frame" and e["source"] == "cam"]
    assert cam_frames == sorted(cam_frames) and max(cam_frames) >= 10  # frames after both reconnects


class Freezing(FrameSource):
    """A live source whose stream goes silent after 5 frames (read blocks) until it is unblocked."""

    live = True
    reconnects = True
    backoff_s = 0.02

    def __init__(self, name, **options):
        super().__init__(name, **options)
        self.rounds, self.woken = 0, threading.Event()

    def read(self):
        self.rounds += 1
        for index in range(5):
            yield np.full((24, 24, 3), 50, np.uint8), f"freezing#{self.rounds}.{index}"
        self.woken.wait()  # a camera that stops sending without closing the connection
        self.woken.clear()

    def unblock(self):
        self.woken.set()

    def reopen(self):
        pass


def test_a_silent_source_is_treated_as_lost_after_the_stall_time(tiny_detector):
    source = Freezing("cam", stall_s=0.3)
    stop = StopRequest()
    seen = _until(watch(tiny_detector, [source], stop=stop), lambda s: source.rounds >= 3, stop)
    downs = [e for e in seen if e["event"] == "source_down"]
    assert len(downs) >= 2 and downs[0]["reason"] == "no frame for 0.3 s"
    assert sum(e["event"] == "source_up" for e in seen) >= 2
    assert sum(e["event"] == "frame" for e in seen) >= 10  # frames from after the reopen


def test_the_station_gives_what_detect_batch_gives_with_a_few_shot_bank(tiny_built, tmp_path):
    from zsad_edge.runtime.detector import Detector

    detector = Detector.from_bundle(tiny_built.path)
    video = write_video(tmp_path / "v.avi", frames=8)
    frames = [image for image, _ in VideoFileSource("read", video).read()]
    detector.attach_memory_bank(detector.fit_normal(frames[:2]))
    events = list(watch(detector, [VideoFileSource("v", video)], batch_size=3))
    direct = detector.detect_batch(frames)
    assert [e["score"] for e in events] == pytest.approx([r.score for r in direct], rel=1e-5, abs=1e-6)
    assert [e["map_max"] for e in events] == pytest.approx([float(r.anomaly_map.max()) for r in direct], rel=1e-5)
