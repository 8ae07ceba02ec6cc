"""Serving through a real Triton Inference Server: `zsad-edge serve` (PyTriton's tritonserver),
`RemoteDetector`, `triton-repo` repositories run by the bundled tritonserver, bad requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT
from serving_helpers import Served, assert_same_result, metric, parts
from station_helpers import free_port

from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import ImageReadError, ServerUnavailableError
from zsad_edge.runtime.serving.model_config import CONFIG_FILE, parse_config
from zsad_edge.runtime.serving.remote import RemoteDetector
from zsad_edge.runtime.serving.tensors import INPUTS, OUTPUTS

pytestmark = [pytest.mark.needs_module("pytriton", "tritonclient"), pytest.mark.slow]


@pytest.fixture(scope="module")
def server(method_bundles):
    served = Served(*method_bundles.values(), "--max-batch", 8, "--max-queue-delay-us", 20000)
    yield served
    assert served.stop() == 0


@pytest.mark.parametrize("method, protocol", [("aprilgan", "grpc"), ("aprilgan", "http"), ("sdp", "grpc"),
                                              ("fnn", "grpc"), ("clipsam", "grpc")])  # fmt: skip
def test_served_results_equal_the_local_detector(server, method_bundles, method, protocol, tmp_path):
    port = server.grpc if protocol == "grpc" else server.http
    remote = RemoteDetector(f"{protocol}://127.0.0.1:{port}", method)
    try:
        images = parts(tmp_path)
        local = Detector.from_bundle(method_bundles[method])
        got, want = remote.detect_batch(images), local.detect_batch(images)
        assert [r.anomaly_map.shape for r in got] == [(60, 80), (90, 70), (48, 64), (75, 100)]
        for one, other in zip(got, want):
            assert_same_result(one, other)
        assert remote.record["method"] == local.manifest.method["name"] and remote.record["model"] == method
        assert remote.scoring["image_threshold"] == local.scoring["image_threshold"]
        if method == "clipsam":
            assert all(r.refinement is not None for r in got)  # the server ran the cascade
    finally:
        remote.close()


def test_concurrent_requests_are_batched_by_triton(server, tmp_path):
    remote = RemoteDetector(server.url, "aprilgan", concurrency=16)
    try:
        before = server.metrics_text()
        frames = [(np.random.default_rng(i).random((48, 64, 3)) * 255).astype(np.uint8) for i in range(48)]
        results = remote.detect_batch(frames)
        after = server.metrics_text()
    finally:
        remote.close()
    assert len(results) == 48
    requests = metric(after, "nv_inference_count", "aprilgan") - metric(before, "nv_inference_count", "aprilgan")
    executions = metric(after, "nv_inference_exec_count", "aprilgan") - metric(
        before, "nv_inference_exec_count", "aprilgan"
    )
    assert requests == 48 and executions < requests  # some model calls took more than one request


def test_a_bad_image_fails_its_own_request_and_the_server_keeps_serving(server, tmp_path):
    truncated = tmp_path / "truncated.png"
    ok, png = cv2.imencode(".png", np.full((40, 40, 3), 90, np.uint8))
    truncated.write_bytes(png.tobytes()[:60])
    remote = RemoteDetector(server.url, "aprilgan")
    try:
        with pytest.raises(ImageReadError, match="^the server could not score an image: cannot decode image"):
            remote(truncated)
        assert np.isfinite(remote(np.full((40, 40, 3), 90, np.uint8)).score)  # the next request is served
    finally:
        remote.close()


def test_a_request_of_the_wrong_dtype_or_shape_gets_a_triton_error(server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    wrong = [
        ("pixels", np.zeros((1, 8, 8, 3), np.float32), "FP32"),  # float pixels
        ("pixels", np.zeros((1, 8, 8), np.uint8), "UINT8"),  # no channel axis
    ]
    for name, data, dtype in wrong:
        request = grpcclient.InferInput(name, list(data.shape), dtype)
        request.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException, match="pixels|dims|shape|datatype|data type"):
            client.infer("aprilgan", [request])
    client.close()
    remote = RemoteDetector(server.url, "aprilgan")  # and it still serves
    remote.close()


def _serve_cli(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "serve", *map(str, arguments)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip


def test_bad_starts_are_one_error_line(tiny_built, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _serve_cli(
            tiny_built.path, "--grpc-port", port, "--http-port", free_port(), "--metrics-port", free_port()
        )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: --grpc-port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        f"stop what uses it or choose another port with --grpc-port"
    ]
    (tmp_path / "not_a_bundle").mkdir()
    done = _serve_cli(tmp_path / "not_a_bundle")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "not a zsad-edge bundle" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(ServerUnavailableError, match=r"grpc://127.0.0.1:\d+ is unavailable"):
        RemoteDetector(f"grpc://127.0.0.1:{free_port()}", "aprilgan")


def test_few_shot_bundles_serve_with_their_memory_bank(method_bundles, tmp_path):
    local = Detector.from_bundle(method_bundles["aprilgan"])
    rng = np.random.default_rng(8)
    local.fit_normal([(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(2)]).save(tmp_path / "bank.npz")
    served = Served(method_bundles["aprilgan"], "--memory-bank", tmp_path / "bank.npz")
    remote = RemoteDetector(served.url, "aprilgan")
    try:
        images = parts(tmp_path)
        for got, want in zip(remote.detect_batch(images), local.detect_batch(images)):
            assert_same_result(got, want)
        assert remote.record["memory_bank"] == str(tmp_path / "bank.npz")
    finally:
        remote.close()
        assert served.stop() == 0


def test_a_python_backend_repository_serves_what_the_local_detector_returns(method_bundles, tmp_path):
    repository = tmp_path / "repo"
    written = subprocess.run(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "triton-repo", method_bundles["aprilgan"], "--out", repository,
         "--max-batch", "4", "--instances", "2"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    config = parse_config((repository / "aprilgan" / CONFIG_FILE).read_text())
    assert config.backend == "python" and config.max_batch_size == 4 and config.instance_group[0].count == 2
    assert {i.name: list(i.dims) for i in config.input} == {name: list(dims) for name, (_, dims) in INPUTS.items()}
    assert {o.name: list(o.dims) for o in config.output} == {name: list(dims) for name, (_, dims) in OUTPUTS.items()}
    again = subprocess.run(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "triton-repo", method_bundles["aprilgan"], "--out", repository],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert again.returncode == 2 and "exists" in again.stderr and "--overwrite" in again.stderr
    served = Served("--repository", repository)
    remote = RemoteDetector(served.url, "aprilgan")
    try:
        images = parts(tmp_path)
        local = Detector.from_bundle(method_bundles["aprilgan"])
        for got, want in zip(remote.detect_batch(images), local.detect_batch(images)):
            assert_same_result(got, want)
        truncated = tmp_path / "bad.png"
        truncated.write_bytes(b"\x89PNG\r\n\x1a\n")
        with pytest.raises(ImageReadError, match="cannot decode image"):
            remote(truncated)
    finally:
        remote.close()
        assert served.stop() == 0


def test_an_invalid_config_is_refused_by_tritons_protobuf():
    from zsad_edge.runtime.errors import ZsadEdgeError

    for text in ('name: "m" max_batch_size: 4 no_such_field: 1', 'name: "m" input { data_type: TYPE_NOPE }'):
        with pytest.raises(ZsadEdgeError, match="invalid config.pbtxt"):
            parse_config(text)


def test_a_dashboard_can_ask_for_a_small_8_bit_preview_instead_of_the_map(server, method_bundles):
    import tritonclient.grpc as grpcclient

    from zsad_edge.runtime.serving.tensors import preview, preview_size

    frame = (np.random.default_rng(4).random((480, 640, 3)) * 255).astype(np.uint8)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    request = grpcclient.InferInput("pixels", [1, 480, 640, 3], "UINT8")
    request.set_data_from_numpy(frame[None])
    wanted = [grpcclient.InferRequestedOutput(name) for name in ("score", "is_anomalous", "preview")]
    reply = client.infer("aprilgan", [request], outputs=wanted)
    client.close()
    assert reply.as_numpy("anomaly_map") is None  # not asked for, not sent
    small = reply.as_numpy("preview")[0]
    assert small.dtype == np.uint8 and small.shape == preview_size(480, 640) == (192, 256)
    local = Detector.from_bundle(method_bundles["aprilgan"])
    expected = preview(local(frame), local.scoring)
    assert np.abs(small.astype(int) - expected.astype(int)).max() <= 1


def test_a_start_removes_the_workspaces_of_servers_killed_before(tmp_path, monkeypatch):
    import tempfile

    from zsad_edge.runtime.serving.server import OWNER_FILE, WORKSPACE_PREFIX, server_workspace

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, running = tmp_path / f"{WORKSPACE_PREFIX}stale", tmp_path / f"{WORKSPACE_PREFIX}running"
    for folder, pid in ((stale, gone.stdout.strip()), (running, str(os.getpid()))):
        (folder / "workspace").mkdir(parents=True)
        (folder / OWNER_FILE).write_text(pid)
    with server_workspace() as mine:
        assert not stale.exists() and running.exists()  # a killed server's folder goes, a running one's stays
        assert (Path(mine) / OWNER_FILE).read_text() == str(os.getpid())
    assert not Path(mine).exists()
