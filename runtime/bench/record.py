"""Recording a bench run: a matrix of backends x precisions x batch sizes, timed per stage in
interleaved rounds, with a reference kernel on as many threads as the product's timed between
rounds as a probe of the machine's own speed and noise, each image's
outputs (for output regressions), cold start, and the environment fingerprint.

The record is JSON (schema SCHEMA, version SCHEMA_VERSION) with the raw samples, so any later
comparison can rerun the statistics.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..bundle import BASE_PRECISION, load_manifest
from ..detector import Detector
from ..errors import BackendUnavailableError, ZsadEdgeError
from ..image_io import list_images, read_image
from ..stopping import NEVER, Stopped, StopRequest
from .cold_start import measure
from .fingerprint import environment
from .timing import benchmark_interleaved

SCHEMA = "zsad-edge-bench"
SCHEMA_VERSION = 1
THUMB = 16  # outputs keep each anomaly map downsampled to THUMB x THUMB
MAX_IMAGES = 16
KERNEL_ELEMENTS, KERNEL_REPEATS, KERNEL_SAMPLES = 1 << 15, 40, 3


@dataclass
class BenchSettings:
    backends: Sequence[str] = ("auto",)  # as detect and watch: what a station runs
    precisions: Sequence[str] = ("fp32",)
    batch_sizes: Sequence[int] = (1,)
    runs: int = 30
    warmup: int = 3
    threads: int | None = None  # onnxruntime intra-op threads (None: its default, one per core)
    cold_start: bool = True
    images: str | None = None  # a folder or file; None: synthetic scans
    block: int = 5
    settle_s: float = 0.2
    device: str = "CPU"  # the OpenVINO device, for the openvino backend


def config_key(backend: str, precision: str, batch_size: int) -> str:
    return f"{backend}/{precision}/b{batch_size}"


def bench_images(sources: Sequence[str] = ()) -> list[np.ndarray]:
    """Up to MAX_IMAGES images from files and folders, or eight seeded synthetic 8-bit 400x256 scans."""
    if sources:
        paths = list_images(sources)[:MAX_IMAGES]
        if not paths:
            raise ZsadEdgeError(f"--images {' '.join(map(str, sources))}: no image found")
        return [read_image(path) for path in paths]
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.random((256, 400)).astype(np.float32), (0, 0), 3)
    return [np.clip((base + 0.05 * rng.standard_normal(base.shape)) * 255, 0, 255).astype(np.uint8) for _ in range(8)]


def batch_of(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """`size` images, cycling through `images`."""
    return [images[i % len(images)] for i in range(size)]


def reference_kernel(workers: int) -> list[float]:
    """KERNEL_SAMPLES timings (ms) of a fixed workload run on `workers` threads at once, each sample
    the slowest thread's: what the cores the product uses give right now.

    As many threads as the product's thread pool, so a process that takes one of them away shows
    here as it does in the product (a single-threaded probe finds a free core and sees nothing); in
    place on arrays that fit the L2 cache, so allocation and memory do not become the measurement;
    ~10 ms per sample, so it averages over the scheduler's time slices. numpy releases the GIL in
    the loop, so the threads run side by side."""
    values = np.random.default_rng(0).random(KERNEL_ELEMENTS)
    outs = [np.empty_like(values) for _ in range(workers)]

    def work(out: np.ndarray) -> float:
        began = time.perf_counter()
        for _ in range(KERNEL_REPEATS):
            np.sin(values, out=out)
        return time.perf_counter() - began

    with ThreadPoolExecutor(workers) as pool:
        return [max(pool.map(work, outs)) * 1e3 for _ in range(KERNEL_SAMPLES)]


def output_record(detector: Detector, images: Sequence[np.ndarray]) -> list[dict]:
    """Each image's score, verdict, map statistics and downsampled map."""
    records = []
    for result in (detector.detect_batch([image])[0] for image in images):
        thumb = cv2.resize(result.anomaly_map.astype(np.float32), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
        records.append(
            {
                "score": result.score,
                "is_anomalous": result.is_anomalous,
                "map_max": float(result.anomaly_map.max()),
                "map_mean": float(result.anomaly_map.mean()),
                "mask_fraction": float(result.mask.mean()),
                "map_thumb": thumb.round(6).tolist(),
            }
        )
    return records


def images_digest(images: Sequence[np.ndarray]) -> str:
    """One digest of the benchmark images (pixels and shapes): outputs compare only on the same set."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(repr((image.shape, str(image.dtype))).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def open_matrix(bundle: Path, settings: BenchSettings) -> tuple[dict[tuple[str, str], Detector], dict[str, str]]:
    """A detector per backend x precision that applies, keyed by the backend that actually runs
    ("auto" resolved), and why each other combination was skipped; an error only when none applies."""
    available = {BASE_PRECISION, *load_manifest(bundle).precisions}
    detectors: dict[tuple[str, str], Detector] = {}
    skipped: dict[str, str] = {}
    for backend, precision in itertools.product(settings.backends, settings.precisions):
        asked = f"{backend}/{precision}"
        if precision not in available:
            skipped[asked] = f"the bundle has no {precision} variant (it has {', '.join(sorted(available))})"
            continue
        try:
            detector = Detector.from_bundle(
                bundle, backend=backend, precision=precision, intra_op_threads=settings.threads, device=settings.device
            )
        except BackendUnavailableError as exc:
            skipped[asked] = str(exc)
            continue
        if (detector.backend, precision) in detectors:
            skipped[asked] = f"runs as {detector.backend}/{precision}, already in the matrix"
            continue
        detectors[(detector.backend, precision)] = detector
    if not detectors:
        raise ZsadEdgeError("nothing in the matrix can run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return detectors, skipped


def record(bundle: Path, settings: BenchSettings, stop: StopRequest = NEVER) -> dict:
    """Run the matrix and return the record (see the module docstring); a stop request ends it
    after the round in hand (Stopped: nothing is written)."""
    bundle = Path(bundle)
    images = bench_images([settings.images] if settings.images else ())
    detectors, skipped = open_matrix(bundle, settings)
    cases = {
        config_key(backend, precision, batch): (detector, batch_of(images, batch))
        for (backend, precision), detector in detectors.items()
        for batch in settings.batch_sizes
    }
    kernel: list[float] = []
    kernel_threads = settings.threads or os.cpu_count() or 1
    rounds = -(-settings.runs // settings.block)

    def between_rounds() -> None:
        kernel.extend(reference_kernel(kernel_threads))
        if stop.requested:
            done = len(kernel) // KERNEL_SAMPLES
            raise Stopped(stop, done, rounds, "no record written", unit="round(s)")

    times = benchmark_interleaved(
        cases, settings.runs, settings.warmup, block=settings.block, settle_s=settings.settle_s,
        between_rounds=between_rounds,
    )  # fmt: skip
    configs = {}
    for key, (detector, batch) in cases.items():
        backend, precision, _ = key.split("/")
        configs[key] = {
            "backend": backend,
            "precision": precision,
            "batch_size": len(batch),
            "providers": detector.providers,
            "samples_ms": times[key].samples,
            "images_per_s": len(batch) * 1e3 / float(np.median(times[key].samples["end_to_end"])),
        }
    outputs = {f"{b}/{p}": output_record(detector, images) for (b, p), detector in detectors.items()}
    first_backend, first_precision = next(iter(detectors))
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle),
        "environment": environment(bundle),
        "settings": {
            "runs": settings.runs,
            "warmup": settings.warmup,
            "threads": settings.threads,
            "images": settings.images or "synthetic",
            "image_count": len(images),
            "images_sha256": images_digest(images),
        },
        "configs": configs,
        "skipped": skipped,
        "noise": {"reference_kernel_ms": kernel, "reference_kernel_threads": kernel_threads},
        "outputs": outputs,
        "cold_start": (
            measure(bundle, first_backend, first_precision, settings.threads) if settings.cold_start else None
        ),
    }
