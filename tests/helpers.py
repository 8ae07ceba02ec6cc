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
