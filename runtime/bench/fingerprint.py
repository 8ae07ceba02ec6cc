"""What a latency number depends on besides the code: the environment fingerprint of a bench run.

Two runs are comparable only on the same CPU (model and the instruction sets that change inference
speed several-fold), the same libraries and the same bundle; `differences` names every field that
differs, so a refused comparison says why.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np

from ..contract import MANIFEST_FILE
from ..cpu import cpu_info


def gpu_name() -> str | None:
    """The first NVIDIA GPU and its driver, where nvidia-smi answers."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    try:
        answer = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.splitlines()[0].strip() if answer.strip() else None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def manifest_sha256(bundle: Path) -> str:
    return hashlib.sha256((Path(bundle) / MANIFEST_FILE).read_bytes()).hexdigest()


def environment(bundle: Path) -> dict:
    """The fingerprint: CPU, cores, OS, Python, the runtime's libraries (onnxruntime, OpenVINO, TensorRT),
    GPU, and the bundle's manifest."""
    model, flags = cpu_info()
    return {
        "cpu": model,
        "cpu_flags": list(flags),
        "logical_cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "tensorrt": _version("tensorrt"),
        "gpu": gpu_name(),
        "bundle_manifest_sha256": manifest_sha256(bundle),
    }


def differences(baseline: dict, new: dict) -> list[str]:
    """`field: baseline -> new` for every fingerprint field that differs."""
    return [
        f"{key}: {baseline.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(baseline) | set(new))
        if baseline.get(key) != new.get(key)
    ]
