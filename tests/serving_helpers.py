"""A real Triton Inference Server for the serving tests: `zsad-edge serve` (PyTriton) started as a
subprocess on free localhost ports, ready once it prints its `serving` line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

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
