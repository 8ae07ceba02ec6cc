"""Serving through Triton: what a served bundle costs and gives next to the local Detector.

In one run, interleaved over --rounds rounds (medians and spread reported):
- local: the in-process `Detector`, one image at a time;
- served, 1 / 4 / 16 clients: `zsad-edge serve` (PyTriton's tritonserver, dynamic batching) on
  this machine, each client a thread sending one image per request (`RemoteDetector`, uint8
  pixels); throughput, per-request p50 / p99 latency, and Triton's own count of model calls per
  batch size (its statistics endpoint) for that configuration;
- station: `zsad-edge watch MODEL --server` on a folder of the same images (--batch-size 8).
On one machine the server and its clients share the cores: this measures the overhead and the
batching, not what a GPU server in the cabinet gives a line of thin stations.

  python benchmarks/serve.py                                      # ViT-B-16 @ 224, APRIL-GAN
  python benchmarks/serve.py --requests 32 --rounds 2 --out benchmarks/results/serve_ViT-B-16_224.json
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from zsad_edge.benchmarks.reports import machine_info, random_bundle, write_report
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.serving.remote import RemoteDetector

CLIENTS = (1, 4, 16)
CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _images(count: int, size=(480, 640)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(count)]


def _latency_stats(latencies_ms: list[float], seconds: float) -> dict:
    return {
        "images_per_s": round(len(latencies_ms) / seconds, 3),
        "p50_ms": round(float(np.percentile(latencies_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies_ms, 99)), 2),
    }


def run_local(detector: Detector, images: list[np.ndarray]) -> dict:
    latencies = []
    began = time.perf_counter()
    for image in images:
        start = time.perf_counter()
        detector(image)
        latencies.append(1e3 * (time.perf_counter() - start))
    return _latency_stats(latencies, time.perf_counter() - began)


def run_served(url: str, model: str, images: list[np.ndarray], clients: int) -> dict:
    remote = RemoteDetector(url, model, concurrency=clients)  # its request pool is shared by the threads
    latencies: list[float] = []
    lock = threading.Lock()

    def client(share: list[np.ndarray]) -> None:
        for image in share:
            start = time.perf_counter()
            remote(image)
            with lock:
                latencies.append(1e3 * (time.perf_counter() - start))

    threads = [threading.Thread(target=client, args=(images[i::clients],)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    remote.close()
    return _latency_stats(latencies, seconds)


def batch_counts(grpc_port: int, model: str) -> dict[int, int]:
    """Model calls per batch size so far (Triton's statistics endpoint)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def add_calls(seen: dict[int, int], before: dict[int, int], after: dict[int, int]) -> None:
    """Add the model calls made between two readings of `batch_counts`, by batch size (non-zero only)."""
    for size, count in after.items():
        if count > before.get(size, 0):
            seen[size] = seen.get(size, 0) + count - before.get(size, 0)


def run_station(model: str, url: str, folder: Path, out: Path) -> dict:
    done = subprocess.run(
        [*CLI, "watch", model, f"cam={folder}", "--server", url, "--out", out, "--batch-size", "8", "--status-s", "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    latency = summary["latency_ms"]["total"]
    assert done.returncode == 0
    return {"images_per_s": summary["frames_per_s"], "p50_ms": latency["p50"], "p99_ms": latency["p99"]}


def start_server(bundle: Path, ports: tuple[int, int, int], max_batch: int) -> subprocess.Popen:
    http, grpc, metrics = ports
    process = subprocess.Popen(
        [*CLI, "serve", bundle, "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
         "--max-batch", str(max_batch), "--max-queue-delay-us", "5000"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in process.stdout:  # the `serving` line once ready (Triton may print before it)
        if line.startswith("{"):
            return process
    raise SystemExit(f"serve did not start (exit {process.wait()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--method", default="aprilgan")
    parser.add_argument("--requests", type=int, default=48, help="images per configuration and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        bundle = random_bundle(args.arch, args.image_size, args.method, folder).path
        images = _images(args.requests)
        drop = folder / "drop"
        drop.mkdir()
        for index, image in enumerate(images):
            cv2.imwrite(str(drop / f"part{index:03d}.png"), image)
        detector = Detector.from_bundle(bundle)
        ports = (_free_port(), _free_port(), _free_port())
        server = start_server(bundle, ports, args.max_batch)
        url, model = f"grpc://127.0.0.1:{ports[1]}", bundle.name
        try:
            run_served(url, model, images[:4], 4)  # warm-up: both sides' first calls
            run_local(detector, images[:2])
            rounds: dict[str, list[dict]] = {}
            batches: dict[str, dict[int, int]] = {}
            for round_index in range(args.rounds):
                rounds.setdefault("local", []).append(run_local(detector, images))
                for clients in CLIENTS:
                    name = f"served_{clients}_clients"
                    before = batch_counts(ports[1], model)
                    rounds.setdefault(name, []).append(run_served(url, model, images, clients))
                    add_calls(batches.setdefault(name, {}), before, batch_counts(ports[1], model))
                out = folder / f"station{round_index}"
                before = batch_counts(ports[1], model)
                rounds.setdefault("station_server_batch8", []).append(run_station(model, url, drop, out))
                add_calls(batches.setdefault("station_server_batch8", {}), before, batch_counts(ports[1], model))
        finally:
            server.terminate()
            server.wait(60)
    table = {}
    print(f"\n{'configuration':<24}{'images/s':>10}{'spread':>16}{'p50 ms':>10}{'p99 ms':>10}  batch sizes")
    for name, runs in rounds.items():
        rates = [r["images_per_s"] for r in runs]
        row = {
            "images_per_s_median": round(float(np.median(rates)), 3),
            "images_per_s_min_max": [min(rates), max(rates)],
            "p50_ms_median": round(float(np.median([r["p50_ms"] for r in runs])), 2),
            "p99_ms_median": round(float(np.median([r["p99_ms"] for r in runs])), 2),
            "rounds": runs,
        }
        if name in batches:
            row["model_calls_by_batch_size"] = dict(sorted(batches[name].items()))
        table[name] = row
        histogram = " ".join(f"{k}:{v}" for k, v in row.get("model_calls_by_batch_size", {}).items())
        print(f"{name:<24}{row['images_per_s_median']:>10.2f}{str(row['images_per_s_min_max']):>16}"
              f"{row['p50_ms_median']:>10.1f}{row['p99_ms_median']:>10.1f}  {histogram}")  # fmt: skip
    report = {
        "benchmark": "serve",
        "machine": machine_info(),
        "bundle": {"arch": args.arch, "image_size": args.image_size, "method": args.method},
        "image": "480x640x3 uint8, sent as pixels",
        "requests_per_configuration": args.requests,
        "rounds": args.rounds,
        "max_batch": args.max_batch,
        "results": table,
    }
    write_report(report, args.out, f"serve_{args.arch}_{args.image_size}")


if __name__ == "__main__":
    main()
