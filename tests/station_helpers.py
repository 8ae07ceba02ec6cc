"""Sources, detectors and services for the station tests: synthetic videos, a bursting live source,
a detector that takes its time, a free local port, a mosquitto broker."""

from __future__ import annotations

import getpass
import socket
import subprocess
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


class Slow:
    """A detector whose model call takes `seconds` longer, so a live source outruns it."""

    def __init__(self, detector, seconds):
        self.detector, self.seconds = detector, seconds

    def infer(self, batch):
        time.sleep(self.seconds)
        return self.detector.infer(batch)

    def __getattr__(self, name):
        return getattr(self.detector, name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mosquitto(tmp_path, password_file=None):
    """A mosquitto broker on a free localhost port; skips (fails under CI) where there is none."""
    binary = require_program("mosquitto")
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", f"user {getpass.getuser()}"]  # as root it would switch to `mosquitto`
    lines += [f"password_file {password_file}", "allow_anonymous false"] if password_file else ["allow_anonymous true"]
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

    def __init__(self, port, topic="#", username=None, password=None):
        import paho.mqtt.client as mqtt

        self.messages = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
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
