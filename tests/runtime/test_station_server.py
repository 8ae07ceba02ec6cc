"""A station without a model: `zsad-edge watch MODEL --server grpc://...` against a real Triton
server (`zsad-edge serve`), giving the events a local station gives, and riding out a server
that stops and comes back mid-stream with exact counts."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT, wait_for_stop_handler
from serving_helpers import Served
from station_helpers import start_watch

from zsad_edge.runtime.station.events import read_events

pytestmark = [pytest.mark.needs_module("pytriton", "tritonclient"), pytest.mark.slow]
WAIT_S = 300


def _events(out):
    path = out / "events.jsonl"
    return list(read_events(path)) if path.is_file() else []


def _wait_for(out, proc, condition, what):
    deadline = time.monotonic() + WAIT_S
    while not condition(_events(out)) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert condition(_events(out)), f"no {what}: " + (proc.stderr.read() if proc.poll() is not None else "timed out")


def _parts(folder, first, count):
    rng = np.random.default_rng(first)
    for index in range(first, first + count):
        cv2.imwrite(str(folder / f"part{index:03d}.png"), (rng.random((48, 64, 3)) * 255).astype(np.uint8))


@pytest.fixture
def model(tiny_built, tmp_path):
    """The tiny bundle in a folder named `line1`: the served model's name."""
    bundle = tmp_path / "line1"
    shutil.copytree(tiny_built.path, bundle)
    return bundle


def test_a_station_on_a_server_writes_the_events_a_local_station_writes(model, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    _parts(folder, 0, 8)
    served = Served(model)
    try:
        remote = subprocess.run(
            [sys.executable, "-m", "zsad_edge.runtime.cli", "watch", "line1", f"cam={folder}", "--server", served.url,
             "--out", tmp_path / "remote", "--status-s", "0", "--batch-size", "4"],
            capture_output=True, text=True, cwd=REPO_ROOT, timeout=WAIT_S,
        )  # fmt: skip
    finally:
        assert served.stop() == 0
    local = subprocess.run(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "watch", model, f"cam={folder}", "--out", tmp_path / "local",
         "--status-s", "0", "--batch-size", "4"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=WAIT_S,
    )  # fmt: skip
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    keys = ("origin", "score", "is_anomalous", "text_score", "map_peak", "map_max", "mask_fraction", "regions")
    got = sorted((tuple(e[k] for k in keys) for e in _events(tmp_path / "remote") if e["event"] == "frame"))
    want = sorted((tuple(e[k] for k in keys) for e in _events(tmp_path / "local") if e["event"] == "frame"))
    assert len(got) == 8 and [g[0] for g in got] == [w[0] for w in want]
    for one, other in zip(got, want):
        assert one[2] == other[2] and one[7] == other[7]  # verdicts and regions
        assert np.allclose(one[1:2] + one[3:7], other[1:2] + other[3:7], rtol=0, atol=1e-6)
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["run"]["server"] == served.url and summary["run"]["model"] == "line1"


def test_a_server_that_stops_mid_stream_is_waited_for_and_every_file_scored_once(model, tmp_path):
    folder, out = tmp_path / "drop", tmp_path / "out"
    folder.mkdir()
    served = Served(model)
    ports = (served.http, served.grpc, served.metrics)
    station = start_watch("line1", f"cam={folder}", "--server", served.url, "--out", out, "--follow",
                          "--settle-s", 0, "--status-s", 0)  # fmt: skip
    try:
        wait_for_stop_handler(station.pid)
        _parts(folder, 0, 10)
        _wait_for(out, station, lambda events: sum(e["event"] == "frame" for e in events) == 10, "first 10 frames")
        assert served.stop() == 0  # the server goes away mid-stream
        _parts(folder, 10, 10)  # parts keep arriving
        _wait_for(out, station, lambda events: any(e["event"] == "server_down" for e in events), "server_down")
        served = Served(model, ports=ports)  # and comes back on its address
        _wait_for(out, station, lambda events: sum(e["event"] == "frame" for e in events) == 20, "all 20 frames")
        station.send_signal(signal.SIGTERM)
        _, stderr = station.communicate(timeout=WAIT_S)
    finally:
        served.stop()
    assert station.returncode == 0, stderr
    events = _events(out)
    frames = [e for e in events if e["event"] == "frame"]
    assert sorted(e["origin"] for e in frames) == [f"part{i:03d}.png" for i in range(20)]  # each exactly once
    kinds = [e["event"] for e in events if e["event"].startswith("server_")]
    assert (
        kinds == ["server_down", "server_up"]
        and "is unavailable" in events[[e["event"] for e in events].index("server_down")]["reason"]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processed"] == 20 and summary["dropped"] == 0
    assert summary["sources"]["cam"]["captured"] == 20
