"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BATTERY_WELD = REPO_ROOT.parent / "shared" / "data" / "battery_weld"


def write_image(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


def run_onnx(model_or_path, feeds: dict) -> list[np.ndarray]:
    """Run an ONNX graph (a path or an in-memory ModelProto) on onnxruntime's CPU provider."""
    import onnxruntime as ort

    source = str(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def relative_map_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs error relative to the reference map's range: the gates' own measure (runtime/comparison.py)."""
    from zsad_edge.runtime.comparison import relative_error

    return relative_error(actual, expected)


def wait_for_stop_handler(pid: int, timeout: float = 300.0) -> None:
    """Wait until process `pid` catches SIGTERM, i.e. the CLI's stop handler is installed (Python
    itself catches only SIGINT), so a signal sent now is a clean stop, whatever the machine's load."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.02)
    raise TimeoutError(f"process {pid} installed no stop handler within {timeout} s")
