"""The operator page's server and live view, in process over real HTTP (uvicorn on a free port):
pause and resume on record with exact counts, the live state stream, the token, files confined
to the output folder, and a stuck file read that holds neither the station nor the live state.
The page itself, in a real browser, is tested in test_station_page.py."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.cookiejar import CookieJar

import pytest
from station_helpers import Burst, Recorder

from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.run_record import run_record
from zsad_edge.runtime.station.station import Station
from zsad_edge.runtime.station.ui.live import LiveView
from zsad_edge.runtime.station.ui.server import UiServer, check_binding, parse_address

pytestmark = pytest.mark.needs_module("starlette", "uvicorn")
WAIT_S = 120
TOKEN = "correct-horse-battery-staple-42"


class Recorded(Burst):
    """A recorded (not live) source: it waits for room and never drops."""

    live = False


@contextmanager
def _served(detector, bundle, tmp_path, sources, host="127.0.0.1", token=None):
    """A running station on `sources` with its page; stopped, joined and closed at the end."""
    record = run_record(detector, bundle, "fp32", None)
    view = LiveView([s.name for s in sources], detector.scoring, record["thresholds"], fps=20.0)
    recorder = Recorder()
    station = Station(detector, sources, sinks=[view], on_event=recorder, record=record)
    server = UiServer(station, view, tmp_path / "out", host, 0, token)
    station.start()
    try:
        yield station, view, server, recorder
    finally:
        station.stop()
        station.join(WAIT_S)
        server.close()
        view.close()
        station.close()


def _request(server, path, method="GET", body=None, headers=None, opener=None):
    """(status, headers, body) of one request; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(server.url.rstrip("/") + path, data=body, method=method, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener(_NoRedirect)).open(request, timeout=30) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _state(server, **options) -> dict:
    status, _, body = _request(server, "/api/state", **options)
    assert status == 200, body
    return json.loads(body)


def _until(condition, what):
    deadline = time.monotonic() + WAIT_S
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition(), what


def _steer(server, source, action, operator=None, **options):
    body = json.dumps({"operator": operator}).encode()
    return _request(
        server, f"/api/sources/{source}/{action}", "POST", body, {"Content-Type": "application/json"}, **options
    )


def test_pause_and_resume_are_on_record_and_every_frame_is_counted(tiny_detector, tiny_built, tmp_path):
    cam = Burst("cam", 10**9, every_s=0.01)
    with _served(tiny_detector, tiny_built.path, tmp_path, [cam]) as (station, view, server, recorder):

        def counts():
            return station.stats.per_source()["cam"]

        _until(lambda: counts()["processed"] >= 5, "no frames scored")
        status, _, body = _steer(server, "cam", "pause", operator="ann")
        assert status == 200 and json.loads(body)["changed"] is True
        assert _steer(server, "cam", "pause")[0] == 200 and cam.paused  # a second pause changes nothing
        paused_at = counts()["processed"]
        _until(lambda: counts()["skipped_paused"] >= 30, "a paused live source stopped capturing")
        # frames queued before the pause still go through (the source's queue, one batch per thread)
        assert counts()["processed"] <= paused_at + cam._size + 3
        state = _state(server)["sources"]["cam"]
        assert state["paused"] is True and state["skipped_paused"] >= 30
        assert _steer(server, "cam", "resume", operator="ann")[0] == 200
        resumed_at = counts()["processed"]
        _until(lambda: counts()["processed"] >= resumed_at + 10, "scoring did not restart")
        missing = _steer(server, "nothing", "pause")
        assert missing[0] == 404 and "no source named 'nothing'" in json.loads(missing[2])["error"]

        with urllib.request.urlopen(server.url + "api/updates", timeout=30) as stream:  # the live state
            lines = [stream.readline().decode() for _ in range(2)]
        assert lines[0] == "event: state\n" and json.loads(lines[1][len("data: ") :])["sources"]["cam"]["processed"] > 0
    paused, resumed = recorder.of("source_paused"), recorder.of("source_resumed")
    assert len(paused) == len(resumed) == 1
    assert paused[0]["by"] == {"operator": "ann", "address": "127.0.0.1"} and paused[0]["source"] == "cam"
    final = station.stats.per_source()["cam"]
    assert resumed[0]["skipped"] == final["skipped_paused"] == final["skipped"] and resumed[0]["paused_s"] > 0
    assert final["captured"] == final["processed"] + final["dropped"] + final["skipped"]  # nothing unaccounted
    ui = view.counts()
    assert ui["written"] + ui["not_drawn"] + ui["dropped"] == final["processed"] and ui["written"] > 0


def test_a_paused_recorded_source_waits_and_loses_nothing(tiny_detector, tiny_built, tmp_path):
    recorder = Recorder()
    source = Recorded("files", 40, every_s=0.005)
    station = Station(tiny_detector, [source], on_event=recorder).start()
    try:
        _until(lambda: station.stats.per_source()["files"]["processed"] >= 3, "no frames scored")
        assert station.pause_source("files", {"operator": None, "address": "test"})
        time.sleep(0.5)  # while paused nothing new is read: at most the queued frames go through
        held = station.stats.per_source()["files"]
        assert held["captured"] <= held["processed"] + source._size + 3
        assert station.resume_source("files", {"operator": None, "address": "test"})
        assert station.join(WAIT_S)
    finally:
        station.close()
    final = station.stats.per_source()["files"]
    assert final["processed"] == final["captured"] == 40 and final["skipped"] == 0
    assert recorder.of("source_resumed")[0]["skipped"] == 0


def test_off_localhost_the_page_and_its_controls_need_the_token(tiny_detector, tiny_built, tmp_path):
    with pytest.raises(ZsadEdgeError, match="needs a token"):
        check_binding("192.168.1.20", None)
    with pytest.raises(ZsadEdgeError, match="too short"):
        check_binding("127.0.0.1", "short")
    assert parse_address("8080") == ("127.0.0.1", 8080) and parse_address("[::1]:81") == ("::1", 81)
    # 127.0.0.2 stands for a plant-network address here: not one of the localhost names
    cam = Burst("cam", 10**9, every_s=0.02)
    with _served(tiny_detector, tiny_built.path, tmp_path, [cam], host="127.0.0.2", token=TOKEN) as running:
        station, _, server, recorder = running
        assert _request(server, "/api/state")[0] == 401
        status, headers, _ = _request(server, "/")
        assert status == 303 and headers["Location"] == "/login"
        assert _steer(server, "cam", "pause")[0] == 401 and not cam.paused
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert _request(server, "/api/state", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert _request(server, "/api/state", headers=bearer)[0] == 200
        refused = _request(server, "/login", "POST", b"token=wrong")
        assert refused[0] == 303 and refused[1]["Location"] == "/login?refused=1"
        jar = CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        assert _request(server, "/login", "POST", f"token={TOKEN}".encode(), opener=browser)[0] == 200  # to "/"
        assert TOKEN not in str([cookie.value for cookie in jar])  # the cookie is derived, not the token
        assert _state(server, opener=browser)["sources"]["cam"]["processed"] >= 0
        assert _steer(server, "cam", "pause", operator="bob", opener=browser)[0] == 200 and cam.paused
    assert [event["by"]["operator"] for event in recorder.of("source_paused")] == ["bob"]


def test_no_file_outside_the_saved_evidence_is_served(tiny_detector, tiny_built, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    out = tmp_path / "out"
    saved = out / "frames" / "cam" / "run1"
    saved.mkdir(parents=True)
    (saved / "00000001_overlay.png").write_bytes(b"\x89PNG picture")
    (out / "events.jsonl").write_text("{}\n")
    (saved / "link.png").symlink_to(secret)
    attempts = [
        "/files/frames/../../secret.txt",
        "/files/frames/%2e%2e/%2e%2e/secret.txt",
        "/files/frames/..%2f..%2fsecret.txt",
        "/files/frames/cam/run1/link.png",
        "/files/frames//etc/passwd",
        "/files/frames/%2fetc%2fpasswd",
        "/files/video/../events.jsonl",
        "/files/frames/../events.jsonl",
        "/static/../../errors.py",
    ]
    with _served(tiny_detector, tiny_built.path, tmp_path, [Burst("cam", 1)]) as (_, _, server, _):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
        for path in attempts:  # sent as written: no client-side clean-up of the path
            connection.request("GET", path)
            reply = connection.getresponse()
            body = reply.read()
            assert reply.status == 404 and b"do not serve" not in body and b"root:" not in body, path
        connection.request("GET", "/files/frames/cam/run1/00000001_overlay.png")
        reply = connection.getresponse()
        assert reply.status == 200 and reply.read() == b"\x89PNG picture"
        connection.close()


def test_a_stuck_file_read_holds_neither_the_station_nor_the_live_state(
    tiny_detector, tiny_built, tmp_path, monkeypatch
):
    from starlette.staticfiles import StaticFiles

    reading, release = threading.Event(), threading.Event()
    original = StaticFiles.lookup_path

    def stuck(self, path):  # a disk that does not answer
        reading.set()
        release.wait(WAIT_S)
        return original(self, path)

    monkeypatch.setattr(StaticFiles, "lookup_path", stuck)
    with _served(tiny_detector, tiny_built.path, tmp_path, [Burst("cam", 10**9, every_s=0.01)]) as running:
        station, _, server, _ = running
        replies = []
        reader = threading.Thread(target=lambda: replies.append(_request(server, "/files/frames/cam/x.png")))
        reader.start()
        try:
            assert reading.wait(WAIT_S)
            before = _state(server)["sources"]["cam"]["processed"]
            _until(lambda: _state(server)["sources"]["cam"]["processed"] >= before + 20, "the station waited")
        finally:
            release.set()
            reader.join(WAIT_S)
    assert replies and replies[0][0] == 404


def test_an_anomaly_the_page_did_not_draw_is_shown_from_the_saved_images(flagging_bundle, tmp_path):
    from zsad_edge.runtime.detector import Detector

    detector = Detector.from_bundle(flagging_bundle, backend="cpu")  # every frame anomalous
    with _served(detector, flagging_bundle, tmp_path, [Burst("cam", 10**9, every_s=0.005)]) as running:
        _, _, server, _ = running
        # pictures are drawn in order: one left undrawn behind a drawn one never will be
        _until(lambda: _passed_over(_state(server)["anomalies"]), "an anomaly left undrawn")
        entry = _passed_over(_state(server)["anomalies"])
        assert _request(server, f"/api/anomalies/{entry['id']}/overlay")[0] == 404  # neither drawn nor saved
        saved = tmp_path / "out" / "frames" / "cam" / entry["run"] / f"{entry['frame']:08d}_overlay.png"
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_bytes(b"\x89PNG saved overlay")  # what --save writes
        status, headers, body = _request(server, f"/api/anomalies/{entry['id']}/overlay")
        assert status == 200 and body == b"\x89PNG saved overlay" and headers["Content-Type"] == "image/png"
        drawn = next(entry for entry in _state(server)["anomalies"] if entry["drawn"])
        status, headers, body = _request(server, f"/api/anomalies/{drawn['id']}/thumbnail")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def _passed_over(anomalies: list[dict]) -> dict | None:
    latest_drawn = max((entry["id"] for entry in anomalies if entry["drawn"]), default=0)
    return next((entry for entry in anomalies if not entry["drawn"] and entry["id"] < latest_drawn), None)
