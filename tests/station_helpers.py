"""Sources, detectors and services for the station tests: synthetic videos, a bursting live source,
a detector that takes its time, a free local port, a mosquitto broker."""

from __future__ import annotations

import getpass
import json
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
from needs import require_program

from zsad_edge.runtime.station.sources import FrameSource


def write_video(path, frames=25, size=(64, 48), fps=10.0):
    """A random-noise MJPG video of `frames` frames (MJPG: decodable by every OpenCV build)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    writer.release()
    return path


def video_frame_count(path) -> int:
    """Frames actually decodable from a video file (0 when it does not open)."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


class Burst(FrameSource):
    """A live source that captures `count` frames as fast as it can (or every `every_s`), then ends."""

    live = True

    def __init__(self, name, count, every_s=0.0, **options):
        super().__init__(name, **options)
        self.count, self.every_s = count, every_s

    def read(self):
        for index in range(self.count):
            time.sleep(self.every_s)
            yield np.full((32, 32, 3), index % 255, np.uint8), f"burst#{index}"


class Recorder:
    """A station's event taker that keeps every event (and passes each receipt on at once)."""

    def __init__(self):
        self.events = []

    def __call__(self, event, receipt=None):
        self.events.append(event)
        if receipt is not None:
            receipt()

    def of(self, kind):
        return [e for e in self.events if e["event"] == kind]

    def wait_for(self, kind, count=1, timeout=120.0):
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.of(kind)) >= count, f"no {kind}: {[e['event'] for e in self.events][-10:]}"


class Slow:
    """A detector whose model call takes `seconds` longer, so a live source outruns it."""

    def __init__(self, detector, seconds):
        self.detector, self.seconds = detector, seconds

    def run(self, batch):
        time.sleep(self.seconds)
        return self.detector.run(batch)

    def __getattr__(self, name):
        return getattr(self.detector, name)


STARTED: list[subprocess.Popen] = []  # killed after each test (conftest) if a failed test left them running


def start_watch(bundle, *arguments, env=None):
    """`zsad-edge watch BUNDLE ARGUMENTS...` as a subprocess (text pipes), from the repository root."""
    from helpers import REPO_ROOT

    process = subprocess.Popen(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "watch", str(bundle), *map(str, arguments)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    STARTED.append(process)
    return process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mosquitto(tmp_path, password_file=None, port=None, persistent=False):
    """A mosquitto broker on a free (or the given) localhost port; skips (fails under CI) where there
    is none. persistent: sessions and queued messages survive a restart (kept in tmp_path)."""
    binary = require_program("mosquitto")
    port = port or free_port()
    config = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", f"user {getpass.getuser()}"]  # as root it would switch to `mosquitto`
    lines += [f"password_file {password_file}", "allow_anonymous false"] if password_file else ["allow_anonymous true"]
    if persistent:
        lines += ["persistence true", f"persistence_location {tmp_path}/"]
    config.write_text("\n".join(lines) + "\n")
    broker = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return broker, port
        except OSError:
            time.sleep(0.05)
    broker.kill()
    raise RuntimeError(f"mosquitto did not start: {broker.stderr.read().decode()}")


class Subscriber:
    """A paho client collecting every message on a topic filter."""

    def __init__(self, port, topic="#", username=None, password=None, session=None):
        import paho.mqtt.client as mqtt

        self.messages = []
        # session: a client id whose subscription and queued messages the broker keeps while it is away
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session or "", clean_session=not session)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = lambda client, userdata, message: self.messages.append(message)
        subscribed = []
        self.client.on_subscribe = lambda *args: subscribed.append(True)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not subscribed and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait_for(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # and nothing more arrives
        return self.messages

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class AuthVideoServer:
    """An HTTP server that streams a video file to clients presenting Basic credentials (401 with a
    challenge otherwise), the way an IP camera's HTTP stream asks for them."""

    def __init__(self, video, user, password):
        import base64
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        data = video.read_bytes()
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.refused = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                if self.headers.get("Authorization") != expected:
                    server.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="camera"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/x-msvideo")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


class MjpegServer:
    """An IP camera's MJPEG-over-HTTP stream (multipart/x-mixed-replace) of `frames`, looped at `fps`,
    until `close()`, which also cuts the streams being watched (the camera is switched off)."""

    def __init__(self, frames, fps=10.0):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        pictures = [cv2.imencode(".jpg", frame)[1].tobytes() for frame in frames]
        stopped = self.stopped = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                index = 0
                try:
                    while not stopped.wait(1.0 / fps):
                        picture = pictures[index % len(pictures)]
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(picture)}\r\n\r\n"
                        self.wfile.write(head.encode() + picture + b"\r\n")
                        index += 1
                except OSError:
                    return

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.stopped.set()
        self.http.shutdown()
        self.http.server_close()


class WebCollector:
    """An HTTP server that records each POSTed JSON body and its headers, answering `status`
    (or never answering, with `hang`)."""

    def __init__(self, status=200, hang=False):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received, self.headers, self.status = [], [], status
        self.release = threading.Event()
        if not hang:
            self.release.set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.release.wait()
                collector.received.append(json.loads(body))
                collector.headers.append(dict(self.headers))
                self.send_response(collector.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.http.shutdown()
        self.http.server_close()


class ModbusDevice:
    """A real pymodbus TCP server (unit 1: 16 coils, 16 holding registers) on a free port, recording
    every write as (function code, address, values): a PLC as the station sees it."""

    def __init__(self):
        import asyncio
        import threading

        from pymodbus.server import StartAsyncTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        self.writes = []

        async def record(function_code, start_address, address, count, registers, set_values):
            if set_values is not None:
                self.writes.append((function_code, address, list(set_values)))
            return None

        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        words = [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(id=1, simdata=(bits, bits, words, words), action=record)
        self.port = free_port()
        serve = StartAsyncTcpServer(context=device, address=("127.0.0.1", self.port))
        threading.Thread(target=asyncio.run, args=(serve,), daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the Modbus server did not start")

    def coil_writes(self, address=0):
        return [values[0] for code, at, values in self.writes if code == 5 and at == address]

    def register_writes(self, address):
        return [values[0] for code, at, values in self.writes if code == 6 and at == address]

    def close(self):
        from pymodbus.server import ServerStop

        ServerStop()


class OpcUaServer:
    """A real asyncua server on a free port with a Line1 object: Verdict (Boolean), Score (Double),
    PartId (String), Time (DateTime) and Count (UInt32), each recording every value written."""

    def __init__(self, port=None):
        from asyncua import ua
        from asyncua.sync import Server

        self.port = port or free_port()
        self.server = Server()
        self.server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/station")
        namespace = self.server.register_namespace("urn:zsad-edge:test")
        line = self.server.nodes.objects.add_object(f"ns={namespace};s=Line1", "Line1")
        initial = {
            "Verdict": ua.Variant(False, ua.VariantType.Boolean),
            "Score": ua.Variant(0.0, ua.VariantType.Double),
            "PartId": ua.Variant("", ua.VariantType.String),
            "Time": ua.Variant(None, ua.VariantType.DateTime),
            "Count": ua.Variant(0, ua.VariantType.UInt32),
        }
        self.nodes = {}
        for name, value in initial.items():
            node = line.add_variable(f"ns={namespace};s=Line1.{name}", name, value)
            node.set_writable()
            self.nodes[name] = f"ns={namespace};s=Line1.{name}"
        self.server.start()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/station"

    def value(self, name):
        return self.server.get_node(self.nodes[name]).read_value()

    def close(self):
        self.server.stop()
