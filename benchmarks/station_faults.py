"""Fault injection into a whole station: is its record still exact after everything goes wrong?

A drop-folder station (`zsad-edge watch --follow --mqtt`, the tiny demo model with an image
threshold that flags about half the parts) is killed and restarted `--cycles` times, each time at
a random moment with SIGKILL or SIGINT, while
- a slow writer drops parts into the folder: each PNG in 3 chunks with pauses (some written as
  NAME.tmp and renamed, some written in place), and
- the MQTT broker (a real mosquitto with persistence) is stopped and started at random moments
  while a station runs (it is up whenever a station starts: a broker that is down at start is
  refused, as a wrong address would be).
A last run without --follow takes what is left and sends what the spool holds. Then:
- every complete file has exactly one frame event (missing, twice);
- no torn line is ever read as an event (torn lines set aside by restarts are counted);
- every anomalous frame event reached the broker exactly once, or is still in the spool
  (missing; duplicates are counted apart: a kill between the broker's acknowledgement and the
  spool's delete sends that one message again after the restart — at least once, by design).

  python benchmarks/station_faults.py                      # 20 cycles
  python benchmarks/station_faults.py --cycles 5 --out benchmarks/results/station_faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report
from zsad_edge.runtime.contract import MANIFEST_FILE
from zsad_edge.runtime.station.events import read_events

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """mosquitto on a fixed port with persistence: stopped and started at will."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
        if not self.binary:
            raise SystemExit("needs mosquitto: apt-get install -y mosquitto")
        self.port, self.folder = free_port(), folder
        self.config = folder / "mosquitto.conf"
        user = os.environ.get("USER") or "root"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nuser {user}\nallow_anonymous true\n"
                               f"persistence true\npersistence_location {folder}/\n")  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.outages = 0

    def start(self) -> None:
        if self.process is None:
            self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)
            for _ in range(200):  # up to ~10 s
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                        return
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None
            self.outages += 1


class Subscriber:
    """A persistent-session subscriber: the broker keeps its messages while either side is away."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.payloads: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="faults-mes", clean_session=False)
        self.client.on_message = lambda client, userdata, message: self.payloads.append(json.loads(message.payload))
        self.client.on_connect = lambda client, *args: client.subscribe("line/#", qos=1)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def slow_writer(folder: Path, count: int, rng: random.Random, done: threading.Event) -> None:
    """Drop `count` parts, each in 3 chunks with pauses; every third under a .tmp name then renamed."""
    for index in range(count):
        image = np.full((48, 64), 40 + (index * 37) % 180, np.uint8)
        if index % 2:
            image[10:30, 20:44] = 255  # a "defect" on every other part
        data = cv2.imencode(".png", image)[1].tobytes()
        name = f"part{index:04d}.png"
        path = folder / (name + ".tmp" if index % 3 == 0 else name)
        with open(path, "wb") as handle:
            for chunk in np.array_split(np.frombuffer(data, np.uint8), 3):
                handle.write(chunk.tobytes())
                handle.flush()
                time.sleep(rng.uniform(0.02, 0.4))
        if path.name != name:
            os.replace(path, folder / name)
        time.sleep(rng.uniform(0.0, 0.3))
    done.set()


def broker_flapper(broker: Broker, rng: random.Random, running: threading.Event, stop: threading.Event) -> None:
    """While a station runs, take the broker down and up again at random moments."""
    while not stop.is_set():
        time.sleep(rng.uniform(0.5, 2.5))
        if running.is_set():
            broker.stop()
            time.sleep(rng.uniform(0.3, 2.0))
        broker.start()


def start_station(bundle: Path, folder: Path, out: Path, port: int, follow: bool) -> subprocess.Popen:
    arguments = [*CLI, "watch", str(bundle), f"cam={folder}", "--out", str(out), "--settle-s", "0.3",
                 "--mqtt", f"mqtt://127.0.0.1:{port}/line/{{source}}", "--mqtt-rate", "1000",
                 "--status-s", "0", "--drain-s", "5"] + (["--follow"] if follow else [])  # fmt: skip
    return subprocess.Popen(arguments, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def demo_bundle(folder: Path) -> Path:
    """The offline demo bundle, its image threshold set so that about half the parts are flagged."""
    bundle = folder / "bundle"
    subprocess.run([sys.executable, str(REPO / "export" / "build_engines.py"), "demo", "--out", str(bundle)],
                   check=True, cwd=folder, capture_output=True)  # fmt: skip
    probe = folder / "probe"
    probe.mkdir()
    for index in range(2):
        image = np.full((48, 64), 100, np.uint8)
        if index:
            image[10:30, 20:44] = 255
        cv2.imwrite(str(probe / f"p{index}.png"), image)
    subprocess.run([*CLI, "detect", str(bundle), str(probe), "--out", str(folder / "probed")],
                   cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    scores = [json.loads((folder / "probed" / f"p{i}.json").read_text())["score"] for i in range(2)]
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["scoring"]["image_threshold"] = sum(scores) / 2
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    return bundle


def run(cycles: int, parts: int, seed: int, scratch: Path) -> dict:
    rng = random.Random(seed)
    bundle = demo_bundle(scratch)
    folder, out = scratch / "drop", scratch / "out"
    folder.mkdir()
    broker = Broker(scratch)
    broker.start()
    subscriber = Subscriber(broker.port)
    written, running, stop_flapping = threading.Event(), threading.Event(), threading.Event()
    threading.Thread(target=slow_writer, args=(folder, parts, rng, written), daemon=True).start()
    threading.Thread(target=broker_flapper, args=(broker, rng, running, stop_flapping), daemon=True).start()
    stops = {"SIGKILL": 0, "SIGINT": 0}
    started = time.monotonic()
    for _ in range(cycles):
        broker.start()
        station = start_station(bundle, folder, out, broker.port, follow=True)
        running.set()
        time.sleep(rng.uniform(3.0, 8.0))  # start-up (imports, model) and then a random moment
        running.clear()
        name = rng.choice(list(stops))
        stops[name] += 1
        station.send_signal(getattr(signal, name))
        station.communicate(timeout=120)
    written.wait()
    stop_flapping.set()
    time.sleep(0.5)
    broker.start()
    final = start_station(bundle, folder, out, broker.port, follow=False)
    _, stderr = final.communicate(timeout=300)
    time.sleep(3.0)  # the persistent session's last messages
    subscriber.close()
    broker.stop()
    return judge(folder, out, subscriber.payloads, stops, broker.outages, time.monotonic() - started, final, stderr)


def judge(folder, out, payloads, stops, outages, elapsed, final, stderr) -> dict:
    files = sorted(p.name for p in folder.glob("*.png"))
    events = list(read_events(out / "events.jsonl"))
    frames = [e for e in events if e["event"] == "frame"]
    per_file: dict[str, int] = {}
    for event in frames:
        per_file[event["origin"]] = per_file.get(event["origin"], 0) + 1
    torn = out / "events.jsonl.torn"
    torn_lines = len(torn.read_text().splitlines()) if torn.is_file() else 0
    raw_lines = (out / "events.jsonl").read_bytes().split(b"\n")
    anomalous = {(e["run"], e["frame"]) for e in frames if e["is_anomalous"]}
    received: dict[tuple, int] = {}
    for payload in payloads:
        key = (payload["run"], payload["frame"])
        received[key] = received.get(key, 0) + 1
    spool = out / "spool" / "mqtt.sqlite"
    in_spool = set()
    if spool.is_file():
        for (payload,) in sqlite3.connect(spool).execute("SELECT payload FROM messages"):
            event = json.loads(payload)
            in_spool.add((event["run"], event["frame"]))
    return {
        "cycles": sum(stops.values()),
        "stops": stops,
        "broker_outages": outages,
        "elapsed_s": round(elapsed, 1),
        "files": len(files),
        "files_without_event": len([f for f in files if f not in per_file]),
        "files_with_two_or_more_events": len([f for f, n in per_file.items() if n > 1]),
        "events_for_no_file": len([f for f in per_file if f not in files]),
        "frame_events": len(frames),
        "torn_lines_set_aside": torn_lines,
        "unparsable_lines_in_log": sum(1 for line in raw_lines[:-1] if not _parses(line)),
        "anomalous_events": len(anomalous),
        "anomalous_delivered_once": len([k for k in anomalous if received.get(k) == 1]),
        "anomalous_in_spool": len([k for k in anomalous if k in in_spool and k not in received]),
        "anomalous_missing": len([k for k in anomalous if k not in received and k not in in_spool]),
        "anomalous_delivered_twice_or_more": len([k for k in anomalous if received.get(k, 0) > 1]),
        "messages_for_no_event": len([k for k in received if k not in anomalous]),
        "final_run_exit": final.returncode,
        "final_run_stderr_tail": stderr.strip().splitlines()[-3:],
    }


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--parts", type=int, default=120, help="files the slow writer drops in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zsad-faults-") as scratch:
        figures = run(args.cycles, args.parts, args.seed, Path(scratch))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value}")
    exact = (figures["files_without_event"], figures["files_with_two_or_more_events"], figures["anomalous_missing"])
    print("\nRESULT:", "PASS" if exact == (0, 0, 0) and figures["unparsable_lines_in_log"] == 0 else "FAIL")
    write_report({"machine": machine_info(), "settings": vars(args) | {"out": None}, "figures": figures},
                 args.out, "station_faults")  # fmt: skip


if __name__ == "__main__":
    main()
