"""`zsad-edge watch` as an inspection record, run as an operator runs it: credentials never leave the
station, no stop (SIGINT, SIGTERM, kill -9) loses or repeats a drop-folder file, a hung webhook
cannot hold a stop past the drain time and loses nothing, an unreadable bundle is one error line."""

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT, wait_for_stop_handler
from station_helpers import AuthVideoServer, WebCollector, free_port, start_watch, write_video

from zsad_edge.runtime.station.events import read_events

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]


def _frames(out):
    path = out / "events.jsonl"
    return [e for e in read_events(path) if e["event"] == "frame"] if path.is_file() else []


def _wait_for_frames(out, count, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while len(_frames(out)) < count and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert len(_frames(out)) >= count, proc.stderr.read() if proc.poll() is not None else "timed out"


def _get(url):
    """The body at url (also of a 503); "" while nothing listens there yet."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()
    except urllib.error.URLError:
        return ""


def test_credentials_never_appear_in_anything_the_station_writes_or_says(flagging_bundle, tmp_path):
    camera = AuthVideoServer(write_video(tmp_path / "line.avi", frames=20), "op", "S3cretPW")
    hook = WebCollector()
    out, port = tmp_path / "out", free_port()
    try:
        proc = start_watch(
            flagging_bundle, f"cam=http://op:S3cretPW@127.0.0.1:{camera.port}/stream.avi", "--out", out,
            "--webhook", hook.url.replace("http://", "http://mes:H00kPW@"), "--webhook-rate", 1000,
            "--metrics-port", port, "--status-s", 0.2, "--save", "anomalies",
        )  # fmt: skip
        _wait_for_frames(out, 15, proc)
        scraped = _get(f"http://127.0.0.1:{port}/metrics") + _get(f"http://127.0.0.1:{port}/healthz")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    finally:
        camera.close()
        hook.close()
    frames = _frames(out)
    assert frames[0]["origin"].startswith(f"http://***@127.0.0.1:{camera.port}/stream.avi#")
    assert hook.received and hook.headers[0]["Authorization"].startswith("Basic ")  # the hook got its credentials
    records = [path for path in out.rglob("*") if path.suffix in (".json", ".jsonl")]
    written = [path.read_bytes().decode(errors="replace") for path in records]
    everything = "\n".join([*written, stdout, stderr, scraped, json.dumps(hook.received)])
    assert len(everything) > 10_000 and "S3cretPW" not in everything and "H00kPW" not in everything
    refused = subprocess.run(
        [*CLI, "watch", str(flagging_bundle), f"rtsp://admin:Pw0rdX@127.0.0.1:{free_port()}/x", "--out", out],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )  # fmt: skip
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and lines[-1].startswith("error: ") and "rtsp://***@127.0.0.1" in lines[-1]
    assert "Pw0rdX" not in refused.stderr + refused.stdout


def test_credentials_can_come_from_the_environment_or_a_file(tmp_path, monkeypatch):
    from zsad_edge.runtime.errors import ZsadEdgeError
    from zsad_edge.runtime.station.credentials import expand, masked
    from zsad_edge.runtime.station.sources import CaptureSource

    camera = AuthVideoServer(write_video(tmp_path / "line.avi", frames=3), "op", "Env-Pw-77")
    (tmp_path / "cam-password").write_text("File-Pw-88\n")
    monkeypatch.setenv("CAM_PASSWORD", "Env-Pw-77")
    try:
        source = CaptureSource("cam", f"http://op:${{CAM_PASSWORD}}@127.0.0.1:{camera.port}/s.avi")
        image, origin = next(source.read())
        source.close()
    finally:
        camera.close()
    assert image.shape == (48, 64, 3) and origin == f"http://***@127.0.0.1:{camera.port}/s.avi#0"
    assert expand(f"rtsp://op:${{file:{tmp_path}/cam-password}}@cam/x") == "rtsp://op:File-Pw-88@cam/x"
    assert masked("password was File-Pw-88, then Env-Pw-77") == "password was ***, then ***"
    with pytest.raises(ZsadEdgeError, match=r"the environment variable NOT_SET_ANYWHERE is not set"):
        expand("rtsp://op:${NOT_SET_ANYWHERE}@cam/x")


def _png(value):
    return cv2.imencode(".png", np.full((24, 32), value, np.uint8))[1].tobytes()


@pytest.mark.slow
def test_no_stop_loses_or_repeats_a_drop_folder_file(tiny_built, tmp_path):
    folder, out = tmp_path / "drop", tmp_path / "out"
    folder.mkdir()
    names = [f"part{i:03d}.png" for i in range(150)]  # enough that each stop finds a backlog
    for index, name in enumerate(names):
        (folder / name).write_bytes(_png(index))
    rng = random.Random(7)
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        before = len(_frames(out))
        proc = start_watch(tiny_built.path, f"drop={folder}", "--out", out, "--follow", "--settle-s", 0,
                      "--queue-size", 4, "--status-s", 0)  # fmt: skip
        wait_for_stop_handler(proc.pid)
        _wait_for_frames(out, before + rng.randint(1, 20), proc)  # a random point, with a backlog queued
        proc.send_signal(stop)
        proc.communicate(timeout=120)
        assert proc.returncode == (-9 if stop == signal.SIGKILL else 0)
    last = start_watch(tiny_built.path, f"drop={folder}", "--out", out, "--status-s", 0)  # takes what is left, ends
    _, stderr = last.communicate(timeout=120)
    assert last.returncode == 0, stderr
    scored = sorted(e["origin"] for e in _frames(out))
    assert scored == names  # every file exactly once: frames in = events out, none twice
    ledger = sqlite3.connect(out / "state" / "drop-folders.sqlite")
    assert ledger.execute("SELECT COUNT(*) FROM files WHERE outcome = 'done'").fetchone()[0] == len(names)


def test_a_hung_webhook_cannot_hold_a_stop_and_its_messages_wait_for_the_next_run(flagging_bundle, tmp_path):
    hung = WebCollector(hang=True)  # accepts, never answers
    out = tmp_path / "out"
    video = write_video(tmp_path / "line.avi", frames=10)
    try:
        proc = start_watch(flagging_bundle, f"line={video}", "--loop", "--out", out, "--webhook", hung.url,
                      "--webhook-rate", 1000, "--drain-s", 2, "--status-s", 0)  # fmt: skip
        _wait_for_frames(out, 20, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)  # it used to take 5 s per queued message
        assert proc.returncode == 0, stderr
    finally:
        hung.close()
    summary = json.loads((out / "summary.json").read_text())
    webhook = summary["sinks"]["webhook"]
    assert webhook["delivered"] == 0 and webhook["spooled"] == webhook["written"] > 0
    assert webhook["written"] + webhook["dropped"] + webhook["abandoned"] == summary["anomalies"]
    waiting = webhook["spooled"]
    collector = WebCollector()
    try:
        again = start_watch(flagging_bundle, f"line={write_video(tmp_path / 'one.avi', frames=1)}", "--out", out,
                       "--webhook", collector.url, "--status-s", 0)  # fmt: skip
        _, stderr = again.communicate(timeout=120)
        assert again.returncode == 0, stderr
    finally:
        collector.close()
    first_run = [event for event in collector.received if event["run"] == summary["run_id"]]
    assert len(first_run) == waiting and len(collector.received) == waiting + 1  # replayed first, then the new one
    assert collector.received[-1]["run"] != summary["run_id"]
    assert [e["frame"] for e in first_run] == sorted(e["frame"] for e in first_run)  # in order


def test_an_unreadable_bundle_is_one_error_line(tiny_built, tmp_path, monkeypatch, capsys):
    from zsad_edge.runtime.cli import main

    bundle = tiny_built.path
    real_is_file = Path.is_file

    def no_permission(path):
        if Path(path).parent == bundle:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", no_permission)  # the tests run as root, which chmod cannot stop
    code = main(["watch", str(bundle), str(write_video(tmp_path / "v.avi", frames=2)), "--out", str(tmp_path / "o")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot read the bundle")
    assert "permission denied" in lines[0] and "chmod -R a+rX" in lines[0]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MB tmpfs: a disk that really fills up (needs root and mount permission, else skipped)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("a real full disk needs root with mount permission (the in-process disk-full test still runs)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_a_state_the_station_reports_and_leaves(tiny_built, tmp_path, tiny_disk):
    import os

    filler = tiny_disk / "filler"
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 40_000))  # about 50 events of room left
    out, port = tiny_disk / "out", free_port()
    video = write_video(tmp_path / "line.avi", frames=10)
    proc = start_watch(tiny_built.path, f"line={video}", "--loop", "--out", out, "--save", "all",
                       "--metrics-port", port, "--status-s", 0)  # fmt: skip
    deadline = time.monotonic() + 120
    while '"disk_full": true' not in _get(f"http://127.0.0.1:{port}/healthz") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()  # it must not crash
        time.sleep(0.1)
    assert "zsad_disk_full 1.0" in _get(f"http://127.0.0.1:{port}/metrics")
    filler.unlink()  # room again
    while not any(e["event"] == "disk_full" for e in read_events(out / "events.jsonl")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sinks"]["images"]["disk_skipped"] > 0  # images stopped first (below --min-free-mb)
    assert summary["events_log"]["held"] == 0 and summary["events_log"]["lost"] == 0
    lines = (out / "events.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # no torn line, nothing glued
    outage = next(json.loads(line) for line in lines if '"disk_full"' in line)
    assert outage["held"] > 0 and outage["until"] >= outage["since"]
    assert summary["processed"] == sum(1 for line in lines if '"event": "frame"' in line)
