"""A real Triton Inference Server for the serving tests: `zsad-edge serve` (PyTriton) started as a
subprocess on free localhost ports, ready once it prints its `serving` line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
from station_helpers import free_port

READY_TIMEOUT_S = 300  # model loading and Triton's start on a loaded 2-core machine


class Served:
    """`zsad-edge serve ARGUMENTS...` on free ports (or the given ones); `stop()` sends SIGTERM."""

    def __init__(self, *arguments, ports=None):
        from helpers import REPO_ROOT

        self.http, self.grpc, self.metrics = ports or (free_port(), free_port(), free_port())
        ports = ["--http-port", self.http, "--grpc-port", self.grpc, "--metrics-port", self.metrics]
        command = [sys.executable, "-m", "zsad_edge.runtime.cli", "serve", *map(str, [*arguments, *ports])]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        self.announced = self._wait_until_ready()

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc}"

    def _wait_until_ready(self) -> dict:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("{"):
                return json.loads(line)
            if not line and self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.process.stderr.read()[-2000:]}")
        self.process.kill()
        raise AssertionError("serve did not become ready")

    def metrics_text(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def stop(self, timeout=60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def metric(text: str, name: str, model: str) -> float:
    """The value of a Triton metric for one model (summed over versions)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def parts(tmp_path):
    """Two files (sent encoded) and two arrays (sent as pixels), of different sizes."""
    rng = np.random.default_rng(3)
    arrays = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((60, 80), (90, 70), (48, 64), (75, 100))]
    for index in (0, 1):
        cv2.imwrite(str(tmp_path / f"part{index}.png"), arrays[index][:, :, ::-1])
    return [tmp_path / "part0.png", tmp_path / "part1.png", arrays[2], arrays[3]]


def assert_same_result(got, want):
    span = float(want.anomaly_map.max() - want.anomaly_map.min()) or 1.0
    assert np.abs(got.anomaly_map - want.anomaly_map).max() <= 1e-5 * span
    assert abs(got.score - want.score) <= 1e-6 and got.is_anomalous == want.is_anomalous
    assert np.array_equal(got.mask, want.mask)
    assert (got.refinement is None) == (want.refinement is None)
    if want.refinement is not None:
        assert np.array_equal(got.refinement.mask, want.refinement.mask)
        refined_span = float(np.ptp(want.refinement.anomaly_map)) or 1.0
        assert np.abs(got.refinement.anomaly_map - want.refinement.anomaly_map).max() <= 1e-5 * refined_span
        assert len(got.refinement.regions) == len(want.refinement.regions)
