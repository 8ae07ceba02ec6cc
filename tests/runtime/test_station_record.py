"""The station as an inspection record: a drop folder takes each file once and only when complete, a
file is done only once its event is written, the event log survives a full disk and torn lines,
no run overwrites another's evidence, and videos come in closed, playable segments."""

import errno
import json
import os
import threading
import time

import cv2
import numpy as np
import pytest
from station_helpers import video_frame_count, write_video

from zsad_edge.runtime.station.drop_folder import DropFolder
from zsad_edge.runtime.station.events import EventLog, read_events
from zsad_edge.runtime.station.sinks import FrameImageSink, VideoSink
from zsad_edge.runtime.station.sources import VideoFileSource
from zsad_edge.runtime.station.station import watch
from zsad_edge.runtime.stopping import StopRequest

THRESHOLDS = {"calibrated": False, "source": "bundle"}


def _png(value=0, size=(20, 30)) -> bytes:
    return cv2.imencode(".png", np.full(size, value, np.uint8))[1].tobytes()


def _jpeg(value=0, size=(20, 30)) -> bytes:
    return cv2.imencode(".jpg", np.full(size, value, np.uint8))[1].tobytes()


def _scans(source, more):
    """Wait until the folder was looked at `more` more times (order, not time, decides)."""
    target = source.scans + more
    deadline = time.monotonic() + 60
    while source.scans < target and time.monotonic() < deadline:
        time.sleep(0.005)
    assert source.scans >= target


class Running:
    """A station on one drop folder in the background, collecting its events."""

    def __init__(self, detector, source):
        self.source, self.stop, self.events = source, StopRequest(), []
        self.thread = threading.Thread(target=self._collect, args=(detector,), daemon=True)
        self.thread.start()

    def _collect(self, detector):
        for event in watch(detector, [self.source], stop=self.stop):
            self.events.append(event)

    def origins(self, kind="frame"):
        return [e["origin"] for e in self.events if e["event"] == kind]

    def wait_for(self, count, kind="frame"):
        deadline = time.monotonic() + 60
        while len(self.origins(kind)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.origins(kind)

    def close(self):
        self.stop.signal = 2
        self.thread.join(60)


def _drop(tmp_path, **options):
    folder = tmp_path / "drop"
    folder.mkdir(exist_ok=True)
    settings = {"follow": True, "state_folder": tmp_path / "state", "settle_s": 0.0, "poll_s": 0.005, **options}
    return folder, DropFolder("drop", folder, **settings)


def test_a_slow_writers_file_is_taken_only_once_complete(tiny_detector, tmp_path):
    folder, source = _drop(tmp_path)
    data = _png(90)
    chunks = [data[i : i + len(data) // 4 + 1] for i in range(0, len(data), len(data) // 4 + 1)]
    running = Running(tiny_detector, source)
    try:
        (folder / "empty.png").write_bytes(b"")  # an empty file is never taken
        with open(folder / "slow.png", "wb") as handle:
            for chunk in chunks[:-1]:
                handle.write(chunk)
                handle.flush()
                _scans(source, 3)  # seen, settled, and still incomplete: no end marker yet
            assert running.origins() == [] and source.counts.skipped == 0
            handle.write(chunks[-1])
        assert running.wait_for(1) == ["slow.png"]
        _scans(source, 3)
        assert running.origins() == ["slow.png"] and source.counts.skipped == 0
    finally:
        running.close()


def test_a_file_being_written_under_a_temporary_name_is_taken_once_renamed(tiny_detector, tmp_path):
    folder, source = _drop(tmp_path)
    running = Running(tiny_detector, source)
    try:
        for name in ("a.png.tmp", "a.png.part", ".a.png"):
            (folder / name).write_bytes(_png(10))
        _scans(source, 3)
        assert running.origins() == []  # complete files, yet under names a writer has not released
        os.replace(folder / "a.png.tmp", folder / "a.png")
        assert running.wait_for(1) == ["a.png"]
    finally:
        running.close()


def test_with_done_markers_a_file_is_taken_only_once_its_marker_exists(tiny_detector, tmp_path):
    done = tmp_path / "scored"
    folder, source = _drop(tmp_path, done_markers=True, processed=f"move:{done}")
    running = Running(tiny_detector, source)
    try:
        (folder / "b.png").write_bytes(_png(20))  # complete and settled, but not released
        _scans(source, 3)
        assert running.origins() == []
        (folder / "b.png.done").write_bytes(b"")
        assert running.wait_for(1) == ["b.png"]
    finally:
        running.close()
    assert sorted(p.name for p in done.iterdir()) == ["b.png", "b.png.done"]  # the marker follows its file


def test_an_undecodable_file_is_retried_then_recorded_as_skipped_once(tiny_detector, tmp_path):
    folder, source = _drop(tmp_path, retries=3)
    running = Running(tiny_detector, source)
    try:
        (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10 + _png()[-12:])  # end marker, bad body
        assert running.wait_for(1, kind="file_skipped") == ["bad.png"]
        (folder / "good.png").write_bytes(_png(5))
        assert running.wait_for(1) == ["good.png"]
    finally:
        running.close()
    skipped = [e for e in running.events if e["event"] == "file_skipped"]
    assert len(skipped) == 1 and skipped[0]["attempts"] == 3 and "decode" in skipped[0]["reason"]
    again = DropFolder("drop", folder, state_folder=tmp_path / "state")  # a restart retries neither
    assert list(watch(tiny_detector, [again])) == []


def test_a_file_is_done_only_once_its_event_was_taken(tiny_detector, tmp_path):
    folder, source = _drop(tmp_path, follow=False, queue_size=2)
    for i in range(8):
        (folder / f"p{i}.png").write_bytes(_png(i))
    stop = StopRequest()
    taken = []
    for event in watch(tiny_detector, [source], stop=stop):
        taken.append(event["origin"])
        if len(taken) == 2:
            stop.signal = 2  # frames already queued still come out
    again = DropFolder("drop", folder, state_folder=tmp_path / "state")
    rest = [e["origin"] for e in watch(tiny_detector, [again])]
    assert sorted(taken + rest) == [f"p{i}.png" for i in range(8)]  # none lost, none twice


def test_a_camera_overwriting_one_name_is_scored_each_time(tiny_detector, tmp_path):
    folder, source = _drop(tmp_path)
    running = Running(tiny_detector, source)
    try:
        (folder / "latest.jpg").write_bytes(_jpeg(10))
        assert running.wait_for(1) == ["latest.jpg"]
        (folder / "latest.jpg").write_bytes(_jpeg(200, size=(24, 30)))  # new size and mtime: a new part
        assert running.wait_for(2) == ["latest.jpg", "latest.jpg"]
    finally:
        running.close()


@pytest.mark.parametrize("processed", ["move", "delete"])
def test_processed_files_are_moved_or_deleted_after_their_event(tiny_detector, tmp_path, processed):
    done = tmp_path / "done"
    folder, source = _drop(tmp_path, follow=False, processed=f"move:{done}" if processed == "move" else "delete")
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(_png(i))
    assert len(list(watch(tiny_detector, [source]))) == 3
    assert list(folder.iterdir()) == []
    assert sorted(p.name for p in done.glob("*.png")) == (["p0.png", "p1.png", "p2.png"] if processed == "move" else [])


def test_an_idle_folder_of_scored_files_is_not_listed_again(tiny_detector, tmp_path, monkeypatch):
    folder, source = _drop(tmp_path, follow=False)
    for i in range(300):
        (folder / f"p{i:04d}.png").write_bytes(_png(i % 255))
    source.ledger.mark_many([source.key(path) for path in folder.iterdir()], "done")  # history, scored before
    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: listings.append(path) or real_scandir(path))
    assert source.pending() == []  # one listing
    assert source.pending() == [] and source.pending() == []  # the folder did not change: not listed again
    assert len(listings) == 1
    assert source.ledger.path.stat().st_size < 200_000  # an indexed store, not a list rewritten per file


def test_the_event_log_survives_a_full_disk_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.write({"event": "frame", "frame": 0, "is_anomalous": False})
    room = {"bytes": 30}  # then the disk fills up in the middle of the next line
    real_write = os.write

    def full_disk(fd, data):
        if fd == log.fd:
            if room["bytes"] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            data = bytes(data)[: room["bytes"]]
            room["bytes"] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    written = []
    for frame in range(1, 6):
        event = {"event": "frame", "frame": frame, "is_anomalous": False}
        log.write(event, on_written=lambda f=frame: written.append(f))
    assert log.disk_full and written == [] and log.pending == 5
    assert [e["frame"] for e in read_events(path)] == [0]  # no torn line was left behind
    room["bytes"] = 10**6
    log.retry()
    assert not log.disk_full and written == [1, 2, 3, 4, 5]
    kinds = [e.get("frame", e["event"]) for e in read_events(path)]
    assert kinds == [0, "disk_full", 1, 2, 3, 4, 5]  # the outage is on record, before what it held
    log.close()


def test_a_torn_last_line_is_never_read_and_a_restart_does_not_glue_onto_it(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"event": "frame", "frame": 0}) + "\n" + '{"event": "frame", "fra')  # kill -9
    assert [e["frame"] for e in read_events(path)] == [0]
    with EventLog(path) as log:
        log.write({"event": "frame", "frame": 1, "is_anomalous": False})
    assert [e["frame"] for e in read_events(path)] == [0, 1]
    assert all(json.loads(line) for line in path.read_text().splitlines())
    assert (tmp_path / "events.jsonl.torn").read_text() == '{"event": "frame", "fra\n'  # kept as evidence


def test_two_runs_into_one_folder_never_overwrite_each_others_images(flagging_detector, tmp_path):
    video = write_video(tmp_path / "line.avi", frames=3)
    for run_id in ("run-a", "run-b"):
        sink = FrameImageSink(tmp_path / "frames", flagging_detector.scoring, THRESHOLDS, "all", run_id=run_id)
        list(watch(flagging_detector, [VideoFileSource("line", video)], sinks=[sink]))
        sink.close()
    for run_id in ("run-a", "run-b"):
        assert len(list((tmp_path / "frames" / "line" / run_id).glob("*_overlay.png"))) == 3


def test_a_video_comes_in_closed_segments_that_play_after_a_crash(flagging_detector, tmp_path):
    video = write_video(tmp_path / "line.avi", frames=12)  # 10 frames/s
    sink = VideoSink(
        tmp_path / "video", flagging_detector.scoring, THRESHOLDS, {"line": 10.0}, run_id="r1", segment_s=0.5
    )
    list(watch(flagging_detector, [VideoFileSource("line", video)], sinks=[sink]))
    deadline = time.monotonic() + 60
    while sink.counts()["written"] < 12 and time.monotonic() < deadline:
        time.sleep(0.01)  # everything handled, and never closed: as after kill -9
    segments = sorted((tmp_path / "video" / "line").glob("r1-*.mp4"))
    assert [p.name for p in segments] == ["r1-0001.mp4", "r1-0002.mp4", "r1-0003.mp4"]
    assert [video_frame_count(p) for p in segments[:2]] == [5, 5]  # closed ones play; the open one is at risk


@pytest.fixture
def flagging_detector(tiny_built):
    from zsad_edge.runtime.detector import Detector

    detector = Detector.from_bundle(tiny_built.path)
    detector.image_threshold = -1e9
    return detector
