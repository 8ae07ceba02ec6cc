"""OpenVINO for a bundle's ONNX graphs: Intel CPUs (and iGPUs, NPUs), the usual engine of x86
camera stations without an NVIDIA GPU.

The same ONNX files as onnxruntime, compiled by OpenVINO for `device`. Precision: fp32 graphs run
with an explicit f32 inference-precision hint (OpenVINO's CPU plugin would otherwise pick bf16 on
CPUs that have it, changing results silently); the `bf16` precision runs the fp32 graphs with a
bf16 hint, only on CPUs OpenVINO says have native bf16; fp16 and int8 (Q/DQ) variants run as
their graphs say, their float parts with the same f32 hint on a CPU (the numeric path whose drift
was gated when the variant was added). Compiled models are cached in `<bundle>.openvino/` beside the bundle (never
inside it, where it would change the verified files); OpenVINO keys its cache by the graph's
content and the compile options, so a changed graph compiles afresh.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import BackendUnavailableError, BundleError
from .ort import threads_from_environment

LOG = logging.getLogger(__name__)
OPENVINO = "openvino"
OPENVINO_EXTRA = "pip install 'zsad-edge[openvino]'"
DEVICES = ("CPU", "GPU", "NPU", "AUTO")
BF16 = "bf16"
# Variants OpenVINO can run; int8-dynamic holds onnxruntime's com.microsoft fused operators.
OPENVINO_PRECISIONS = ("fp32", "fp16", "int8", BF16)
# On a CPU every variant but bf16 computes its float parts in f32, as onnxruntime did when the
# variant's drift was gated; left alone, OpenVINO would pick bf16 on CPUs that have it.
_CPU_HINTS = {BF16: "bf16"}


def import_openvino():
    """Import OpenVINO or say which extra to install."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError(f"the openvino backend needs OpenVINO: {OPENVINO_EXTRA}") from None
    return openvino


def openvino_available() -> bool:
    try:
        import_openvino()
    except BackendUnavailableError:
        return False
    return True


def cache_folder(bundle_dir: Path) -> Path:
    """Where compiled models live: beside the bundle, so the bundle's verified files never change."""
    bundle_dir = Path(bundle_dir).resolve()
    return bundle_dir.parent / f"{bundle_dir.name}.openvino"


def native_bf16(core, device: str = "CPU") -> bool:
    """True where the device computes in bf16 natively (AVX512_BF16, AMX), as OpenVINO reports it."""
    try:
        return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def check_precision(precision: str, core, device: str) -> None:
    """Refuse what OpenVINO cannot run, or could only emulate slowly, naming what it can."""
    if precision not in OPENVINO_PRECISIONS:
        raise BackendUnavailableError(
            f"the openvino backend cannot run the {precision!r} variant (onnxruntime's com.microsoft fused "
            f"operators); it runs {', '.join(OPENVINO_PRECISIONS)}: choose one with --precision"
        )
    if precision == BF16 and not native_bf16(core, device):
        raise BackendUnavailableError(
            f"bf16 needs a {device} with native bf16 (AVX512_BF16 or AMX); this one has none and would "
            "emulate it slowly: use fp32, fp16 or int8"
        )


class OpenVinoComponent:
    """One exported graph compiled by OpenVINO, with the GraphComponent interface."""

    def __init__(
        self,
        onnx_path: Path,
        core,
        device: str = "CPU",
        precision: str = "fp32",
        threads: int | None = None,
        cache: Path | None = None,
        contract_names: Sequence[str] = (),
    ) -> None:
        if device not in DEVICES:
            raise BackendUnavailableError(f"unknown OpenVINO device {device!r}; choose one of {', '.join(DEVICES)}")
        available = core.available_devices
        if device != "AUTO" and not any(name.split(".")[0] == device for name in available):
            raise BackendUnavailableError(f"OpenVINO has no {device} device here (available: {', '.join(available)})")
        check_precision(precision, core, device)
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if device in ("CPU", "AUTO"):
            config["INFERENCE_PRECISION_HINT"] = _CPU_HINTS.get(precision, "f32")
        threads = threads_from_environment(threads)
        if threads and device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        if cache is not None and _writable_folder(cache):
            config["CACHE_DIR"] = str(cache)
        try:
            model = core.read_model(str(onnx_path))
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            raise BundleError(f"OpenVINO cannot compile {onnx_path.name}: {str(exc).strip().splitlines()[0]}") from None
        self.name = onnx_path.name
        self.loaded_from_cache = bool(_property(self.compiled, "LOADED_FROM_CACHE", False))
        hint = _property(self.compiled, "INFERENCE_PRECISION_HINT", None)
        self.providers = [f"OpenVINO {device}" + (f" ({hint})" if hint else "")]
        self.input_names = [_port_name(port, contract_names) for port in self.compiled.inputs]
        self.output_names = [_port_name(port, contract_names) for port in self.compiled.outputs]
        self.input_shapes = {
            name: [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            for name, port in zip(self.input_names, self.compiled.inputs)
        }
        self._request = self.compiled.create_infer_request()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns outputs by name (copies: the request's buffers are reused)."""
        results = self._request.infer({name: np.ascontiguousarray(feeds[name]) for name in self.input_names})
        return {name: np.array(results[port]) for name, port in zip(self.output_names, self.compiled.outputs)}


def _port_name(port, contract_names: Sequence[str]) -> str:
    """The bundle's name for a port. A port can carry several tensor names (a freshly compiled fp16
    graph names its output both `taps` and the Cast node's output), and which one
    `get_any_name()` returns differs between a first compile and a cached model."""
    names = port.get_names()
    return next((name for name in contract_names if name in names), port.get_any_name())


def _property(compiled, key: str, default):
    try:
        value = compiled.get_property(key)
    except RuntimeError:
        return default
    if key == "INFERENCE_PRECISION_HINT":  # an openvino Type: its short name (f32, bf16, f16)
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value).lower()
    return value


def _writable_folder(folder: Path) -> bool:
    """Create the cache folder; where that is not allowed (a read-only install) compile without a cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        LOG.warning(
            "OpenVINO model cache off: cannot create %s (%s); every start compiles afresh", folder, exc.strerror
        )
        return False
    return True
