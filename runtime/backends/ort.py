"""onnxruntime sessions for bundle components, with honest reporting of the provider in use.

onnxruntime-gpu lists CUDA/TensorRT providers even when their libraries fail to load and then
falls back to CPU without an error; the providers actually bound are read back from the session.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackendUnavailableError, BundleError, ZsadEdgeError

LOG = logging.getLogger(__name__)

# Preference order per backend name; "auto" takes every accelerator the installed build offers.
_BACKEND_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "auto": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
BACKENDS = tuple(_BACKEND_PROVIDERS)
THREADS_ENV = "ZSAD_EDGE_THREADS"  # caps inference threads on a shared CPU (onnxruntime and OpenVINO)


def import_onnxruntime():
    """Import onnxruntime or say which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            "onnxruntime is not installed: pip install 'zsad-edge[cpu]' for CPUs, or "
            "'zsad-edge[gpu]' for NVIDIA GPUs (never both: they overwrite each other)"
        ) from None
    return onnxruntime


def threads_from_environment(threads: int | None) -> int | None:
    """The thread count asked for, else $ZSAD_EDGE_THREADS, else None (the backend's own default)."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if threads is not None or not text:
        return threads
    if not text.isdigit() or int(text) < 1:
        raise ZsadEdgeError(f"{THREADS_ENV}={text!r} is not a thread count: set a whole number >= 1, or unset it")
    return int(text)


def select_providers(backend: str, available: list[str]) -> list[str]:
    """Providers to request for a backend name, given what this onnxruntime build offers."""
    if backend not in _BACKEND_PROVIDERS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    wanted = _BACKEND_PROVIDERS[backend]
    if backend != "auto" and wanted[0] not in available:
        raise BackendUnavailableError(
            f"backend {backend!r} needs {wanted[0]}, which this onnxruntime build does not offer "
            f"(available: {', '.join(available)}); install 'zsad-edge[gpu]' on a machine with CUDA"
        )
    return [p for p in wanted if p in available]


# onnxruntime 1.32's layout optimisations crash on the fp16 ViT encoder with fp32 LayerNorm
# islands (measured), while ORT_ENABLE_EXTENDED runs it.
EXTENDED_OPTIMIZATION_ONLY = ("fp16",)


def optimization_level(ort, precision: str):
    """ORT_ENABLE_ALL, except for the precisions in EXTENDED_OPTIMIZATION_ONLY."""
    levels = ort.GraphOptimizationLevel
    return levels.ORT_ENABLE_EXTENDED if precision in EXTENDED_OPTIMIZATION_ONLY else levels.ORT_ENABLE_ALL


class OrtComponent:
    """One exported graph loaded in an onnxruntime session."""

    def __init__(
        self,
        onnx_path: Path,
        backend: str = "auto",
        intra_op_threads: int | None = None,
        precision: str = "fp32",
        provider_options: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """provider_options: per provider name, options for the providers this build offers
        (e.g. TensorrtExecutionProvider's engine cache and profile shapes)."""
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = optimization_level(ort, precision)
        options.log_severity_level = 3
        # Spinning worker threads keep burning cores after a run; with two graphs per frame
        # (encoder, then heads) on a small CPU they steal time from the next graph.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        intra_op_threads = threads_from_environment(intra_op_threads)
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        requested = select_providers(backend, ort.get_available_providers())
        try:
            providers = [(p, dict(provider_options[p])) if p in (provider_options or {}) else p for p in requested]
            self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"onnxruntime cannot load {onnx_path.name}: {str(exc).splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        if backend != "auto" and requested[0] not in self.providers:
            raise BackendUnavailableError(
                f"{requested[0]} failed to load for {onnx_path.name} (session fell back to {self.providers[0]}); "
                "check the CUDA/cuDNN/TensorRT libraries on this machine"
            )
        if self.providers[0] != requested[0]:
            LOG.warning("%s: %s unavailable, running on %s", onnx_path.name, requested[0], self.providers[0])
        self.name = onnx_path.name
        self.input_shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.input_names = list(self.input_shapes)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns outputs by name."""
        outputs = self.session.run(self.output_names, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs))
