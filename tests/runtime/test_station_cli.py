"""`zsad-edge watch` as a station operator runs it: subprocesses, real signals, a real broker, the
metrics endpoint scraped while it runs, and one clear error line for each kind of bad start."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from helpers import REPO_ROOT
from station_helpers import Subscriber, free_port, start_mosquitto, start_watch, video_frame_count, write_video

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]


def _wait_for_events(events, count, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (not events.is_file() or len(events.read_text().splitlines()) < count):
        time.sleep(0.05)


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_sigint_leaves_a_playable_video_complete_events_and_summary(flagging_bundle, tmp_path):
    video, out, port = write_video(tmp_path / "line.avi", frames=10), tmp_path / "out", free_port()
    proc = start_watch(flagging_bundle, f"line1={video}", "--loop", "--out", out, "--video", "--save", "anomalies",
                  "--metrics-port", port, "--status-s", 0.5)  # fmt: skip
    _wait_for_events(out / "events.jsonl", 15)
    status, metrics = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and 'zsad_frames_processed_total{source="line1"}' in metrics
    status, health = _get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and json.loads(health) == {
        "status": "ok",
        "sources_up": {"line1": True},
        "sinks": {},
        "events": {"disk_full": False, "held": 0, "lost": 0},
    }
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr
    lines = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]  # every line whole
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "stopped by SIGINT" and summary["processed"] == len(lines) >= 15
    assert {line["run"] for line in lines} == {summary["run_id"]}  # one run id, in every event
    assert summary["sources"]["line1"]["dropped"] == 0 and "stopped by SIGINT" in stdout
    sinks = summary["sinks"]
    assert sinks["video"]["written"] + sinks["video"]["dropped"] == len(lines)
    run = summary["run_id"]
    assert video_frame_count(out / "video" / "line1" / f"{run}-0001.mp4") == sinks["video"]["written"] > 0  # it plays
    assert len(list((out / "frames" / "line1" / run).glob("*_overlay.png"))) == sinks["images"]["written"] > 0
    assert json.loads((out / "runs" / f"{run}.json").read_text()) == summary  # a summary per run
    assert "line1 " in stderr and "f/s" in stderr  # the status line
    assert set(summary["latency_ms"]) >= {"total", "infer"} and summary["load_s"] > 0


def test_a_video_run_publishes_every_anomalous_frame_to_mqtt(flagging_bundle, tmp_path):
    broker, port = start_mosquitto(tmp_path)
    subscriber = Subscriber(port, "station/#")
    try:
        video, out = write_video(tmp_path / "line.avi", frames=12), tmp_path / "out"
        proc = start_watch(flagging_bundle, f"line1={video}", "--out", out, "--mqtt", f"mqtt://127.0.0.1:{port}/station/x",
                      "--mqtt-rate", 1000)  # fmt: skip
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        summary = json.loads((out / "summary.json").read_text())
        messages = subscriber.wait_for(12)
        assert summary["anomalies"] == 12 and summary["sinks"]["mqtt"]["delivered"] == 12
        assert sorted(json.loads(m.payload)["frame"] for m in messages) == list(range(12))
    finally:
        subscriber.close()
        broker.kill()


def test_a_second_signal_exits_at_once(flagging_bundle, tmp_path):
    silent = socket.socket()  # accepts connections, never answers: every webhook request hangs
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        video, out = write_video(tmp_path / "line.avi", frames=10), tmp_path / "out"
        hook = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        proc = start_watch(flagging_bundle, f"line1={video}", "--loop", "--out", out, "--webhook", hook)
        _wait_for_events(out / "events.jsonl", 20)
        proc.send_signal(signal.SIGINT)  # the station drains, then waits for the hanging webhook
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130  # a drained stop exits 0, after the hanging webhook's timeout
        assert stderr.strip().splitlines()[-1].startswith("stopped at once by a second signal")
    finally:
        silent.close()


def _refusal(bundle, tmp_path, *arguments):
    out = tmp_path / "out"
    proc = subprocess.run(
        [*CLI, "watch", str(bundle), *map(str, arguments)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    events = out / "events.jsonl"
    assert not events.is_file() or events.read_text() == ""  # no frame was processed
    return proc.returncode, proc.stderr.strip().splitlines()


def test_bad_starts_are_one_error_line_before_any_frame(tiny_built, tmp_path):
    video, out = write_video(tmp_path / "v.avi", frames=3), tmp_path / "out"
    (tmp_path / "a-file").write_text("")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    cases = {
        "unknown source 'nothing.xyz'": ["nothing.xyz", "--out", out],
        "cannot write events to": [video, "--out", tmp_path / "a-file" / "out"],
        f"--metrics-port {busy.getsockname()[1]}: cannot listen": [
            video, "--out", out, "--metrics-port", busy.getsockname()[1]],
        "cannot reach the MQTT broker": [video, "--out", out, "--mqtt", f"mqtt://127.0.0.1:{free_port()}/t"],
        "--stall-s must be > 0": [video, "--out", out, "--stall-s", 0],
        "needs a token": [video, "--out", out, "--ui", "0.0.0.0:0"],
        "--ui-token is too short": [video, "--out", out, "--ui", "8080", "--ui-token", "abc"],
        "expected PORT or HOST:PORT": [video, "--out", out, "--ui", "localhost:http"],
        f"--ui 127.0.0.1:{busy.getsockname()[1]}: cannot serve the page there": [
            video, "--out", out, "--ui", busy.getsockname()[1]],
    }  # fmt: skip
    try:
        for message, arguments in cases.items():
            code, lines = _refusal(tiny_built.path, tmp_path, *arguments)
            assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    finally:
        busy.close()
