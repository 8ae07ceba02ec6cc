"""`zsad-edge serve`: bundles served by NVIDIA Triton Inference Server through PyTriton.

Triton owns the network side (HTTP/REST and gRPC in the KServe v2 protocol, dynamic batching,
health, readiness and Prometheus metrics); each bundle is a model whose requests PyTriton hands
to a `Detector` in this process. One detector per `--instances`: Triton runs that many batches
at once. The model name is the bundle folder's name, the version is taken from the manifest's
sha256 (scoring.py), so a client can tell which bundle answered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..detector import Detector
from ..errors import ZsadEdgeError
from ..stopping import StopRequest
from .scoring import model_name, request_images, score_requests, served_record
from .tensors import INPUTS, OUTPUTS, reply_batch
from .tritonserver import SERVE_EXTRA, start_tritonserver, use_this_interpreters_libpython

LOG = logging.getLogger(__name__)
WATCH_S = 0.2


@dataclass(frozen=True)
class Ports:
    """Where Triton listens: one address for HTTP, gRPC and metrics."""

    bind: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def check_free(self) -> None:
        """Refuse a port already in use before Triton starts (it would fail later, in its own log)."""
        for flag, port in (("--http-port", self.http), ("--grpc-port", self.grpc), ("--metrics-port", self.metrics)):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # as Triton binds: connections of a previous server waiting out TIME_WAIT do not count
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.bind, port))
                except OSError as exc:
                    raise ZsadEdgeError(
                        f"{flag} {port}: cannot listen on {self.bind}:{port} ({exc.strerror}); "
                        f"stop what uses it or choose another port with {flag}"
                    ) from None


@dataclass(frozen=True)
class Batching:
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1


@dataclass
class ServedModel:
    """A bundle as Triton serves it: its name, version, run record and one detector per instance."""

    name: str
    version: int
    record: dict[str, Any]
    detectors: list[Detector]

    def infer_functions(self) -> list[Callable]:
        return [self._infer_function(detector) for detector in self.detectors]

    def _infer_function(self, detector: Detector) -> Callable:
        record = self.record

        def infer(requests: Sequence[Any]) -> list[dict[str, np.ndarray]]:
            images = [request_images(request.data, detector.decode_keep_side) for request in requests]
            outcomes = score_requests(detector, images)
            errors = {o.error for per_request in outcomes for o in per_request if o.result is None}
            if all(o.result is None for per_request in outcomes for o in per_request):
                # nothing in this batch could be scored: a real Triton error for each request
                raise ZsadEdgeError("; ".join(sorted(errors)))
            return [reply_batch(per_request, record) for per_request in outcomes]

        return infer


def served_model(bundle: Path, detectors: list[Detector], precision: str, memory_bank: Path | None) -> ServedModel:
    name = model_name(bundle, precision)
    record = served_record(detectors[0], bundle, name, precision, memory_bank)
    return ServedModel(name, record["version"], record, detectors)


def serve(
    models: Sequence[ServedModel], ports: Ports, batching: Batching, stop: StopRequest, on_ready: Callable[[], None]
) -> None:
    """Run Triton with the models until a stop is requested or Triton dies; clean up its workspace."""
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig, TritonSecurityConfig
    except ImportError:
        raise ZsadEdgeError(f"serving needs NVIDIA PyTriton: {SERVE_EXTRA}") from None
    ports.check_free()
    use_this_interpreters_libpython()
    inputs = [Tensor(name=n, dtype=d, shape=s, optional=True) for n, (d, s) in INPUTS.items()]
    outputs = [Tensor(name=n, dtype=d, shape=s) for n, (d, s) in OUTPUTS.items()]
    with server_workspace() as temporary:
        config = TritonConfig(
            http_address=ports.bind,
            http_port=ports.http,
            grpc_address=ports.bind,
            grpc_port=ports.grpc,
            metrics_address=ports.bind,
            metrics_port=ports.metrics,
            allow_cpu_metrics=True,
            allow_gpu_metrics=shutil.which("nvidia-smi") is not None,  # else NVML's failure is printed
            log_file=Path(temporary) / "tritonserver.log",
            exit_timeout_secs=5,
        )
        # PyTriton guards Triton's control endpoints with a token of its own; statistics (per-model
        # request, batch-size and latency counts) are read-only and what an operator sizes by.
        guarded = [endpoint for endpoint in DEFAULT_PROTECTED_ENDPOINTS if endpoint != "statistics"]
        security = TritonSecurityConfig(restricted_endpoints=guarded)
        triton = Triton(config=config, workspace=Path(temporary) / "workspace", security_config=security)
        try:
            for model in models:
                triton.bind(
                    model_name=model.name,
                    model_version=model.version,
                    infer_func=model.infer_functions(),
                    inputs=inputs,
                    outputs=outputs,
                    config=ModelConfig(
                        max_batch_size=batching.max_batch,
                        batcher=DynamicBatcher(max_queue_delay_microseconds=batching.max_queue_delay_us),
                    ),
                    strict=True,
                )
            triton.run()
            on_ready()
            while not stop.requested and triton.is_alive():
                time.sleep(WATCH_S)
            if not stop.requested:
                raise ZsadEdgeError(f"Triton stopped unexpectedly; its log: {_last_lines(config.log_file)}")
        finally:
            triton.stop()


def serve_repository(repository: Path, ports: Ports, stop: StopRequest) -> None:
    """Run the bundled tritonserver on a model repository until a stop is requested or it exits."""
    if not repository.is_dir():
        raise ZsadEdgeError(f"no model repository at {repository}: write one with `zsad-edge triton-repo`")
    ports.check_free()
    with server_workspace() as temporary:
        log_file = Path(temporary) / "tritonserver.log"
        server = start_tritonserver(
            repository.resolve(), Path(temporary), ports.bind, (ports.http, ports.grpc, ports.metrics)
        )
        try:
            announced = False
            while not stop.requested and server.poll() is None:
                if not announced and _ready(ports):
                    print(json.dumps({"serving": str(repository), "http": f"{ports.bind}:{ports.http}",
                                      "grpc": f"{ports.bind}:{ports.grpc}"}), flush=True)  # fmt: skip
                    announced = True
                time.sleep(WATCH_S)
            if not stop.requested:
                raise ZsadEdgeError(f"tritonserver exited ({server.returncode}); its log: {_last_lines(log_file)}")
        finally:
            if server.poll() is None:
                server.terminate()  # Triton stops on SIGTERM, within its --exit-timeout-secs
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


WORKSPACE_PREFIX = "zsad-edge-triton-"
OWNER_FILE = "owner.pid"


@contextmanager
def server_workspace() -> Iterator[str]:
    """A temporary folder for Triton's workspace and log, removed on exit. A server killed with
    SIGKILL cannot remove its own: the next start removes those whose owner process is gone."""
    for stale in Path(tempfile.gettempdir()).glob(WORKSPACE_PREFIX + "*"):
        if not _owner_alive(stale / OWNER_FILE):
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=WORKSPACE_PREFIX) as temporary:
        (Path(temporary) / OWNER_FILE).write_text(str(os.getpid()))
        yield temporary


def _owner_alive(owner_file: Path) -> bool:
    """True while the process named in the file runs (or the file is unreadable: then leave it)."""
    try:
        pid = int(owner_file.read_text())
    except (OSError, ValueError):
        try:
            return owner_file.parent.stat().st_mtime > time.time() - 60  # still being set up
        except OSError:
            return True  # removed meanwhile: nothing to do
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's server
    return True


def _ready(ports: Ports) -> bool:
    """Triton's readiness endpoint: every model in the repository loaded."""
    host = "127.0.0.1" if ports.bind in ("0.0.0.0", "") else ports.bind
    try:
        with urllib.request.urlopen(f"http://{host}:{ports.http}/v2/health/ready", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _last_lines(log_file: Path, count: int = 3) -> str:
    try:
        return " | ".join(log_file.read_text(errors="replace").splitlines()[-count:])
    except OSError:
        return "(none written)"
