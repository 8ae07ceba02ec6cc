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

# Instruction sets that change CPU inference speed several-fold (int8 dot products, bf16, AMX).
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "sve",
)


def cpu_info() -> tuple[str, list[str]]:
    """The CPU model and which of SPEED_FLAGS it has (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = {f for line in lines if line.startswith(("flags", "Features")) for f in line.split(":", 1)[1].split()}
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model, [flag for flag in SPEED_FLAGS if flag in flags]


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
    """The fingerprint: CPU, cores, OS, Python, the runtime's libraries, GPU, and the bundle's manifest."""
    model, flags = cpu_info()
    return {
        "cpu": model,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "onnxruntime": _version("onnxruntime"),
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
