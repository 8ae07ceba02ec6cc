"""Station sinks: frame images, annotated video, MQTT to a real mosquitto broker, a webhook to a real
HTTP server. Each is bounded, drops and counts when behind, and never slows the line."""

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from needs import require_program
from station_helpers import Burst, Subscriber, free_port, start_mosquitto, video_frame_count, write_video

from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.station.messaging import MQTT_PASSWORD_ENV, MqttSink, MqttTarget, WebhookSink, parse_header
from zsad_edge.runtime.station.sinks import FrameImageSink, RateLimit, VideoSink
from zsad_edge.runtime.station.sources import VideoFileSource
from zsad_edge.runtime.station.station import watch

THRESHOLDS = {"calibrated": False, "source": "bundle"}


@pytest.fixture
def flagging_detector(tiny_built):
    """A detector that flags every frame, so every frame reaches the anomaly sinks."""
    detector = Detector.from_bundle(tiny_built.path)
    detector.image_threshold = -1e9
    return detector


def _run(detector, tmp_path, sinks, frames=30, name="line"):
    source = VideoFileSource(name, write_video(tmp_path / f"{name}.avi", frames=frames))
    events = list(watch(detector, [source], sinks=sinks))
    for sink in sinks:
        sink.close()
    return events


def test_a_stuck_sink_drops_its_oldest_items_and_never_slows_the_line(flagging_detector, tmp_path):
    released = threading.Event()

    class StuckDisk(FrameImageSink):
        def handle(self, frame, result, event):
            released.wait(timeout=120)  # a disk that hangs until the line has finished
            super().handle(frame, result, event)

    sink = StuckDisk(tmp_path / "frames", flagging_detector.scoring, THRESHOLDS, queue_size=2)
    source = VideoFileSource("line", write_video(tmp_path / "v.avi", frames=30))
    events = list(watch(flagging_detector, [source], sinks=[sink]))  # would hang here if the line waited
    released.set()
    sink.close()
    assert len(events) == 30
    counts = sink.counts()
    assert counts["written"] + counts["dropped"] == 30 and counts["dropped"] >= 30 - 3  # 1 in hand + 2 queued
    written = sorted(p.name for p in (tmp_path / "frames" / "line" / "run").glob("*_overlay.png"))
    assert len(written) == counts["written"] and written[-1] == "00000029_overlay.png"  # the newest kept


def test_saved_frames_come_as_frame_overlay_and_mask_and_respect_the_rate(flagging_detector, tmp_path):
    sink = FrameImageSink(tmp_path / "frames", flagging_detector.scoring, THRESHOLDS, "all", rate_per_s=1e6)
    _run(flagging_detector, tmp_path, [sink], frames=5)
    names = sorted(p.name for p in (tmp_path / "frames" / "line" / "run").iterdir())
    assert names[:3] == ["00000000_frame.png", "00000000_mask.png", "00000000_overlay.png"] and len(names) == 15
    limited = FrameImageSink(tmp_path / "limited", flagging_detector.scoring, THRESHOLDS, "all", rate_per_s=0.001)
    _run(flagging_detector, tmp_path, [limited], frames=5)
    assert limited.counts()["written"] == 1 and limited.counts()["rate_limited"] == 4


def test_the_rate_limit_is_a_bucket_of_one_seconds_worth_per_source():
    now = [100.0]
    limit = RateLimit(3.0, clock=lambda: now[0])
    assert [limit.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert limit.allow("b")  # another source has its own bucket
    now[0] += 0.4  # 1.2 tokens back
    assert [limit.allow("a") for _ in range(2)] == [True, False]
    now[0] += 60.0  # a long pause refills one second's worth, no more
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]
    assert all(RateLimit(None).allow("a") for _ in range(100))


def test_the_annotated_video_holds_every_frame_and_plays(flagging_detector, tmp_path):
    sink = VideoSink(tmp_path / "video", flagging_detector.scoring, THRESHOLDS, {"line": 10.0}, queue_size=1000)
    _run(flagging_detector, tmp_path, [sink], frames=24)
    assert sink.counts()["written"] == 24 and video_frame_count(tmp_path / "video" / "line" / "run-0001.mp4") == 24


def test_mqtt_gets_one_message_per_anomalous_frame(tiny_built, tmp_path):
    broker, port = start_mosquitto(tmp_path)
    subscriber = Subscriber(port, "factory/#")
    try:
        detector = Detector.from_bundle(tiny_built.path)
        scores = [e["score"] for e in _run(detector, tmp_path, [], frames=30)]
        detector.image_threshold = float(np.median(scores))  # about half of the frames anomalous
        sink = MqttSink(MqttTarget.parse(f"mqtt://127.0.0.1:{port}/factory/{{source}}"), rate_per_s=1e6)
        events = _run(detector, tmp_path, [sink], frames=30)
        anomalous = [e["frame"] for e in events if e["is_anomalous"]]
        messages = subscriber.wait_for(len(anomalous))
        assert 0 < len(anomalous) < 30 and sink.counts()["delivered"] == len(anomalous)
        assert [json.loads(m.payload)["frame"] for m in messages] == anomalous
        assert {m.topic for m in messages} == {"factory/line"} and {m.qos for m in messages} == {1}
    finally:
        subscriber.close()
        broker.kill()


def test_mqtt_never_exceeds_its_rate_limit(flagging_detector, tmp_path):
    broker, port = start_mosquitto(tmp_path)
    subscriber = Subscriber(port)
    try:
        sink = MqttSink(MqttTarget.parse(f"mqtt://127.0.0.1:{port}/t"), rate_per_s=5.0)
        source = VideoFileSource("line", write_video(tmp_path / "v.avi", frames=20, fps=20.0), realtime=True)
        started = time.monotonic()
        events = list(watch(flagging_detector, [source], sinks=[sink]))
        elapsed = time.monotonic() - started
        sink.close()
        messages = subscriber.wait_for(sink.counts()["written"])
        assert len(events) == 20 and len(messages) <= 5.0 * (elapsed + 1)
        assert len(messages) + sink.counts()["rate_limited"] == 20 and len(messages) >= 3
    finally:
        subscriber.close()
        broker.kill()


def test_mqtt_credentials_are_checked_before_any_frame(flagging_detector, tmp_path, monkeypatch):
    passwords = tmp_path / "passwords"
    subprocess.run([require_program("mosquitto_passwd"), "-c", "-b", str(passwords), "station", "s3cret"], check=True)
    broker, port = start_mosquitto(tmp_path, password_file=passwords)
    try:
        monkeypatch.setenv(MQTT_PASSWORD_ENV, "wrong")
        with pytest.raises(ZsadEdgeError, match="did not accept the connection: Not authorized"):
            MqttSink(MqttTarget.parse(f"mqtt://station@127.0.0.1:{port}/t"))
        monkeypatch.setenv(MQTT_PASSWORD_ENV, "s3cret")
        subscriber = Subscriber(port, username="station", password="s3cret")
        sink = MqttSink(MqttTarget.parse(f"mqtt://station@127.0.0.1:{port}/t"), rate_per_s=1e6)
        _run(flagging_detector, tmp_path, [sink], frames=4)
        assert len(subscriber.wait_for(4)) == 4
        subscriber.close()
    finally:
        broker.kill()


@pytest.mark.needs_module("paho")
@pytest.mark.parametrize(
    "url, message",
    [
        ("mqtt://127.0.0.1:{port}/t", "cannot reach the MQTT broker 127.0.0.1:{port}"),
        ("tcp://127.0.0.1/t", "--mqtt wants mqtt://host"),
    ],
)
def test_a_broker_that_is_not_there_is_one_clear_error(url, message):
    port = free_port()
    with pytest.raises(ZsadEdgeError, match=message.format(port=port)):
        MqttSink(MqttTarget.parse(url.format(port=port)))


class Collector(BaseHTTPRequestHandler):
    received: list = []
    status = 200

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def web_server():
    handler = type("Handler", (Collector,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def test_the_webhook_gets_each_anomaly_and_refusals_are_counted(flagging_detector, tmp_path, web_server):
    url, handler = web_server
    sink = WebhookSink(url, rate_per_s=1e6)
    _run(flagging_detector, tmp_path, [sink], frames=6)
    assert [event["frame"] for event in handler.received] == list(range(6)) and sink.counts()["delivered"] == 6
    handler.status = 400  # the server will never take these: counted, not retried
    refusing = WebhookSink(url, rate_per_s=1e6)
    _run(flagging_detector, tmp_path, [refusing], frames=3)
    counts = refusing.counts()
    assert (counts["failed"], counts["delivered"], counts["spooled"]) == (3, 0, 0) and "400" in counts["last_error"]
    with pytest.raises(ZsadEdgeError, match="--webhook wants an http"):
        WebhookSink("ftp://example/hook")


def test_a_live_source_is_filmed_at_the_rate_its_frames_arrive(flagging_detector, tmp_path):
    sink = VideoSink(tmp_path / "video", flagging_detector.scoring, THRESHOLDS, {"cam": None}, queue_size=1000)
    events = list(watch(flagging_detector, [Burst("cam", 30, every_s=0.04, queue_size=100)], sinks=[sink]))
    sink.close()
    capture = cv2.VideoCapture(str(tmp_path / "video" / "cam" / "run-0001.mp4"))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    assert len(events) == 30 and video_frame_count(tmp_path / "video" / "cam" / "run-0001.mp4") == 30
    captured = [event["captured_monotonic"] for event in events[:10]]
    arrived = 9 / (captured[-1] - captured[0])  # the rate the first 10 frames came at, however busy the machine
    assert fps == pytest.approx(arrived, rel=0.02) and fps != 10.0  # not the default


def _frame(index, source="line"):
    from zsad_edge.runtime.station.sources import Frame

    return Frame(source, index, time.time(), time.monotonic(), np.zeros((4, 4, 3), np.uint8))


def _send(sink, frames):
    for index in frames:
        sink(_frame(index), None, {"event": "frame", "frame": index, "is_anomalous": True})


def _until(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_mqtt_outages_are_reported_and_nothing_is_lost_in_them_or_at_a_stop(tmp_path):
    from zsad_edge.runtime.station.spool import Spool

    broker, port = start_mosquitto(tmp_path, persistent=True)
    subscriber = Subscriber(port, "line/#", session="line-mes")  # the broker keeps its messages while it is away
    reports = []
    target = MqttTarget.parse(f"mqtt://127.0.0.1:{port}/line/{{source}}")
    try:
        sink = MqttSink(target, spool=Spool(tmp_path / "spool.sqlite"), rate_per_s=1e6, ack_timeout_s=1.0)
        sink.connection.report = reports.append
        _send(sink, range(3))
        assert _until(lambda: sink.counts()["delivered"] == 3)
        broker.terminate()
        broker.wait()
        _send(sink, range(3, 6))  # the broker is down: into the spool, in order
        assert _until(lambda: not sink.state()["connected"] and sink.state()["spooled"] == 3)
        assert [r["event"] for r in reports] == ["sink_down"] and reports[0]["sink"] == "mqtt"
        broker, _ = start_mosquitto(tmp_path, port=port, persistent=True)
        assert _until(lambda: sink.counts()["delivered"] == 6)  # back: the spool is sent by itself
        assert [r["event"] for r in reports] == ["sink_down", "sink_up"]
        broker.terminate()
        broker.wait()
        _send(sink, range(6, 8))
        sink.close(deadline=time.monotonic() + 1.0)  # a stop while it is down: the spool keeps them on disk
        assert len(Spool(tmp_path / "spool.sqlite")) == 2
        broker, _ = start_mosquitto(tmp_path, port=port, persistent=True)
        again = MqttSink(target, spool=Spool(tmp_path / "spool.sqlite"), rate_per_s=1e6)  # the next run
        assert _until(lambda: again.counts()["delivered"] == 2)
        again.close()

        # wait for 8 distinct frames, not 8 messages: a redelivered one must not end the wait early
        def arrived():
            return [json.loads(m.payload)["frame"] for m in list(subscriber.messages)]

        _until(lambda: set(arrived()) == set(range(8)), timeout=30)
        time.sleep(0.3)  # and nothing more arrives
        frames = arrived()
        # all 8, in order of first arrival; the broker may redeliver one it held when it was stopped
        # (QoS 1 between broker and subscriber is at least once)
        assert list(dict.fromkeys(frames)) == list(range(8)) and len(frames) - 8 <= 2
    finally:
        subscriber.close()
        broker.kill()


def test_a_webhook_that_is_down_keeps_its_messages_for_when_it_is_back(tmp_path):
    from station_helpers import WebCollector

    from zsad_edge.runtime.station.spool import Spool

    server = WebCollector(status=503)  # answers, but is not taking anything now
    try:
        sink = WebhookSink(server.url, spool=Spool(tmp_path / "spool.sqlite"), rate_per_s=1e6)
        _send(sink, range(4))
        assert _until(lambda: not sink.state()["connected"] and sink.state()["spooled"] == 4)
        server.status = 200
        assert _until(lambda: sink.counts()["delivered"] == 4)
        sink.close()
        assert [event["frame"] for event in server.received[-4:]] == [0, 1, 2, 3] and sink.counts()["failed"] == 0
    finally:
        server.close()


def test_webhook_credentials_go_in_a_header_never_in_the_url_or_the_output(tmp_path, monkeypatch, caplog):
    from station_helpers import WebCollector

    from zsad_edge.runtime.station.credentials import masked

    monkeypatch.setenv("HOOK_TOKEN", "tok-123456")
    server = WebCollector()
    try:
        url = server.url.replace("http://", "http://mes:H00kPW@")
        sink = WebhookSink(url, headers=dict([parse_header("X-Api-Key: ${HOOK_TOKEN}")]), rate_per_s=1e6)
        _send(sink, range(1))
        sink.close()
        headers = server.headers[0]
        assert headers["Authorization"] == "Basic bWVzOkgwMGtQVw==" and headers["X-Api-Key"] == "tok-123456"
        shown = server.url.replace("http://", "http://***@")
        assert "H00kPW" not in sink.target and masked(f"{url} tok-123456") == f"{shown} ***"
    finally:
        server.close()


def test_a_message_spooled_by_a_killed_run_without_its_event_is_forgotten(tmp_path):
    from zsad_edge.runtime.station.spool import Spool

    spool = Spool(tmp_path / "spool.sqlite")
    for run, frame in (("A", 7), ("B", 1), ("B", 2), ("B", 3)):  # B was killed after spooling frame 3
        spool.put("t", json.dumps({"run": run, "source": "line", "frame": frame}).encode())
    log_tail = [{"event": "frame", "run": "B", "source": "line", "frame": f} for f in (1, 2)]
    server = socket.socket()  # a webhook that accepts and never answers: nothing leaves the spool
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    try:
        url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
        sink = WebhookSink(url, spool=spool, recorded=log_tail, rate_per_s=1e6, timeout_s=0.2)
        kept = [json.loads(payload)["frame"] for _, payload in spool.newest(10)]
        sink.close(deadline=time.monotonic() + 0.5)
    finally:
        server.close()
    assert sorted(kept) == [1, 2, 7]  # B's frame 3 has no event: forgotten; an older run's message kept


def test_health_turns_degraded_while_a_sink_cannot_reach_its_receiver(tiny_detector, tmp_path):
    from station_helpers import WebCollector

    from zsad_edge.runtime.station.metrics import StationCollector, health
    from zsad_edge.runtime.station.station import Station

    server = WebCollector(status=503)
    sink = WebhookSink(server.url, rate_per_s=1e6)
    station = Station(tiny_detector, [Burst("cam", 100_000, every_s=0.01)], sinks=[sink]).start()
    try:
        station.detector.image_threshold = -1e9  # every frame anomalous: messages go out
        assert _until(lambda: not sink.state()["connected"])
        healthy, body = health(station)
        assert not healthy and body["status"] == "degraded" and body["sinks"]["webhook"]["connected"] is False
        families = {family.name: family for family in StationCollector(station).collect()}
        assert [sample.value for sample in families["zsad_sink_up"].samples] == [0.0]
        server.status = 200
        assert _until(lambda: sink.state()["connected"] and sink.state()["spooled"] == 0)
        assert health(station)[0]
    finally:
        station.close()
        sink.close()
        server.close()
        station.detector.image_threshold = station.detector.scoring["image_threshold"]
