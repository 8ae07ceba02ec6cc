"""Running a station for months: a config file with regions of interest and per-source thresholds,
systemd's notify protocol and watchdog, retention, and a disk guard that stops images first."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT
from station_helpers import Burst, write_video

from zsad_edge.runtime.station.retention import Retention
from zsad_edge.runtime.station.sinks import DiskGuard, FrameImageSink
from zsad_edge.runtime.station.source_rules import RegionOfInterest, SourceRules
from zsad_edge.runtime.station.sources import VideoFileSource
from zsad_edge.runtime.station.station import Station, watch
from zsad_edge.runtime.station.systemd import Notifier, Watchdog

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]
ROI = [[8, 8], [56, 8], [56, 40], [8, 40]]  # the middle of a 64 x 48 frame


def _until(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def _part_video(path, defects):
    """A plain grey part; frames with a defect get a bright patch in the corner, outside ROI."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for defect in defects:
        frame = np.full((48, 64, 3), 128, np.uint8)
        frame[12:36, 16:48] = (110, 120, 130)  # the part
        if defect:
            frame[0:8, 0:8] = (255, 255, 255)
        writer.write(frame)
    writer.release()
    return path


def test_a_defect_outside_the_region_of_interest_cannot_flag_the_frame(tiny_detector, tmp_path):
    video = _part_video(tmp_path / "line.avi", [False, True])
    plain = [e["score"] for e in watch(tiny_detector, [VideoFileSource("cam", video)])]
    assert abs(plain[1] - plain[0]) > 1e-4  # the corner patch does move the score without a region
    threshold = (plain[0] + plain[1]) / 2
    rules = {"cam": SourceRules(RegionOfInterest.parse(ROI, "roi"), image_threshold=threshold)}
    station_events = []
    station = Station(tiny_detector, [VideoFileSource("cam", video)], rules=rules,
                      on_event=lambda event, receipt=None: station_events.append(event)).start()  # fmt: skip
    assert station.join(60)
    frames = [e for e in station_events if e["event"] == "frame"]
    assert frames[0]["score"] == pytest.approx(frames[1]["score"], abs=1e-6)  # the model saw the same input
    assert frames[0]["is_anomalous"] == frames[1]["is_anomalous"]
    assert all(e["roi"] == [8, 8, 48, 32] and e["image_threshold"] == threshold for e in frames)
    assert all(
        box[0] + box[2] <= 48 and box[1] + box[3] <= 32 for e in frames for box in (r["box"] for r in e["regions"])
    )


def test_a_polygon_clears_the_map_outside_it():
    rules = SourceRules(RegionOfInterest.parse([[0, 0], [9, 0], [0, 9]], "roi"), map_threshold=0.5)
    from zsad_edge.runtime.pipeline import DetectionResult

    result = DetectionResult(score=0.2, anomaly_map=np.ones((9, 9)), mask=np.ones((9, 9), bool), is_anomalous=True,
                             text_score=0.2, map_peak=1.0)  # fmt: skip
    judged = rules.judge(result, (0, 0, 9, 9))
    inside = rules.roi.inside((0, 0, 9, 9))
    assert judged.mask.sum() == inside.sum() < 81 and not judged.mask[8, 8] and judged.is_anomalous


def _watch(*arguments, env=None, timeout=120):
    return subprocess.run([*CLI, "watch", *map(str, arguments)], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=timeout)  # fmt: skip


def test_a_config_file_runs_a_station_and_mistakes_are_named(tiny_built, tmp_path):
    video = _part_video(tmp_path / "line.avi", [False, True, False])
    config = tmp_path / "station.toml"
    config.write_text(
        f'bundle = "{tiny_built.path}"\nout = "{tmp_path / "out"}"\n'
        '[watch]\nstatus-s = 0\nevents = "all"\n'
        f'[[source]]\nname = "plain"\nuri = "{video}"\n'
        f'[[source]]\nname = "cam"\nuri = "{video}"\nroi = {ROI}\nimage_threshold = 0.5\n'
        "[retention]\nkeep_days = 30\n"
    )
    checked = _watch("--config", config, "--check-config")
    assert checked.returncode == 0 and "OK: 2 source(s) (plain, cam), 1 with a region of interest" in checked.stdout
    ran = _watch("--config", config, "--events", "anomalies")  # the command line wins over the file
    assert ran.returncode == 0, ran.stderr
    events = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    frames = [e for e in events if e["event"] == "frame"]
    assert all(e["is_anomalous"] for e in frames)  # --events anomalies, from the command line
    cam = [e for e in frames if e["source"] == "cam"]
    assert all(e["roi"] == [8, 8, 48, 32] and e["is_anomalous"] == (e["score"] > 0.5) for e in cam)
    mistakes = {
        "unknown key(s) colour": 'colour = "red"\n',
        "[watch] batch-size: expected int, got 'two'": '[watch]\nbatch-size = "two"\n',
        "[watch] save: expected one of anomalies, all, none": '[watch]\nsave = "some"\n',
        "[[source]] #1 roi: a polygon needs at least 3 points": '[[source]]\nuri = "x.avi"\nroi = [[1, 2]]\n',
        "[[source]] #1: uri is missing": '[[source]]\nname = "a"\n',
        "not valid TOML": "[watch\n",
    }
    for message, text in mistakes.items():
        config.write_text(f'bundle = "{tiny_built.path}"\nout = "{tmp_path / "out"}"\n' + text)
        refused = _watch("--config", config, "--check-config")
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and message in lines[0], lines


def test_systemd_hears_ready_watchdog_pings_and_stopping(tiny_built, tmp_path):
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    video = write_video(tmp_path / "line.avi", frames=10)
    proc = subprocess.Popen([*CLI, "watch", str(tiny_built.path), f"line={video}", "--loop", "--out", tmp_path / "out",
                             "--status-s", "0"], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    messages = []
    try:
        while sum(m.startswith("WATCHDOG=1") for m in messages) < 3:
            messages.append(listener.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while not messages[-1].startswith("STOPPING=1"):
            messages.append(listener.recv(4096).decode())
        proc.communicate(timeout=60)
    finally:
        proc.kill()
        listener.close()
    assert messages[0].startswith("READY=1\nSTATUS=") and proc.returncode == 0
    assert "frame(s)" in messages[-2] and messages[-1] == "STOPPING=1"


class Hanging:
    """A detector whose model call hangs from the 3rd call on, as a wedged GPU driver would."""

    def __init__(self, detector):
        self.detector, self.calls, self.hung = detector, 0, threading.Event()
        self.release = threading.Event()

    def run(self, batch):
        self.calls += 1
        if self.calls >= 3:
            self.hung.set()
            self.release.wait(120)
        return self.detector.run(batch)

    def __getattr__(self, name):
        return getattr(self.detector, name)


def test_a_hung_model_call_stops_the_watchdog_pings(tiny_detector):
    hanging = Hanging(tiny_detector)
    source = Burst("cam", 100_000, every_s=0.001, queue_size=2)
    station = Station(hanging, [source]).start()
    try:
        assert hanging.hung.wait(60)

        def frozen():
            beat, dropped = station.heartbeat, source.counts.dropped
            _until(lambda: source.counts.dropped >= dropped + 100)  # the source goes on; does the loop?
            return station.heartbeat == beat

        assert _until(frozen)  # a loop that turned would have a newer heartbeat at every look
        notifier = Notifier({"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "2000000"})
        watchdog = Watchdog(notifier, lambda: station.heartbeat, clock=lambda: station.heartbeat + 1.5)
        assert not watchdog.tick() and watchdog.pings == 0  # 1.5 s without a turn: past half of 2 s
        assert Watchdog(notifier, lambda: 10.0, clock=lambda: 10.5).tick()  # a fresh turn: pinged
    finally:
        hanging.release.set()
        station.close()


def test_retention_removes_the_oldest_evidence_first_and_says_so(tmp_path, caplog):
    now = 1_800_000_000.0
    files = {
        "frames/cam/r1/00000000_frame.png": 40,  # days old
        "video/cam/r1-0001.mp4": 20,
        "events-20261101T000000Z-000001.jsonl": 10,
        "frames/cam/r2/00000000_frame.png": 1,
        "video/cam/r2-0001.mp4": 0.5,
    }
    for name, age_days in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age_days * 86400,) * 2)
    (tmp_path / "events.jsonl").write_bytes(b"{}\n")
    reports = []
    removed = Retention(tmp_path, keep_days=30, report=reports.append, clock=lambda: now).sweep()
    assert [p.name for p in removed] == ["00000000_frame.png"] and not (tmp_path / "frames" / "cam" / "r1").exists()
    removed = Retention(tmp_path, max_disk_bytes=2500, report=reports.append, clock=lambda: now).sweep()
    assert [p.name for p in removed] == ["r1-0001.mp4", "events-20261101T000000Z-000001.jsonl"]
    assert (tmp_path / "events.jsonl").is_file() and (tmp_path / "video" / "cam" / "r2-0001.mp4").is_file()
    assert [r["files"] for r in reports] == [1, 2] and "retention: removed 2 file(s)" in caplog.text


def test_images_stop_first_when_the_disk_runs_low(tiny_detector, tmp_path):
    scoring, thresholds = tiny_detector.scoring, {"calibrated": False, "source": "bundle"}
    guard = DiskGuard(tmp_path, min_free_bytes=10**18)  # more than any disk has: low
    sink = FrameImageSink(tmp_path / "frames", scoring, thresholds, "all", guard=guard, rate_per_s=1e6)
    list(watch(tiny_detector, [VideoFileSource("line", write_video(tmp_path / "v.avi", frames=4))], sinks=[sink]))
    sink.close()
    assert sink.counts()["disk_skipped"] == 4 and sink.counts()["written"] == 0
    assert not (tmp_path / "frames").exists()
