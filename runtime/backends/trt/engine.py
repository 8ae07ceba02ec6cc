"""TensorRT engines built from a bundle's ONNX on the device that runs them, and cached.

An engine (plan) is only valid for the GPU model and TensorRT version it was built with, so it is
never shipped: it is built here from the bundle's ONNX and stored in an engine cache folder beside
the bundle, next to a JSON record of its key (ONNX sha256, GPU, compute capability, TensorRT
version, precision, profile) and of its own sha256. On load, an engine whose record names another
GPU or TensorRT version, or whose bytes do not match the record (a torn copy), is rebuilt from the
ONNX, with a warning that says why.

Precision comes from the ONNX itself (calibration/precision.py): the network is always created
strongly typed, which TensorRT 10.x takes as a creation flag and TensorRT 11.x, which removed the
FP16/INT8 builder flags, always uses. The graph is parsed from its file path so external weight
files (`<name>.onnx.data`) resolve.

tensorrt and cuda-python are imported only when an engine is built or run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...bundle import ComponentSpec, sha256_file
from ...errors import BackendUnavailableError, ZsadEdgeError
from ...image_io import write_bytes_atomic
from .profiles import ProfileConfig, profile_shapes

LOG = logging.getLogger(__name__)

DEFAULT_WORKSPACE_GB = 2.0
_TRT_INSTALL = (
    "pip install 'zsad-edge[trt]' --extra-index-url https://pypi.nvidia.com on the GPU machine "
    "(JetPack ships TensorRT for the system Python)"
)


class EngineError(ZsadEdgeError):
    """A TensorRT engine cannot be built, loaded or matched to its bundle."""


def import_tensorrt():
    """Import tensorrt or say how to install it."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(f"TensorRT is not installed: {_TRT_INSTALL}") from None
    return tensorrt


def import_cudart():
    """cuda-python's runtime API (cuda.bindings.runtime from 12.6; the older cuda.cudart before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendUnavailableError("cuda-python is not installed: pip install 'zsad-edge[trt]'") from None
    return cudart


def cuda_check(cudart, result, what: str):
    """cuda-python returns (error, *values); raise on an error, return the values."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        message = cudart.cudaGetErrorString(error)[1].decode()
        raise BackendUnavailableError(f"CUDA {what} failed: {message}")
    return values[0] if len(values) == 1 else values


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is bound to besides its graph."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str


def current_device(device_index: int = 0) -> DeviceInfo:
    """The GPU and TensorRT of this machine; a clear error where either is missing."""
    trt = import_tensorrt()
    cudart = import_cudart()
    try:
        count = cuda_check(cudart, cudart.cudaGetDeviceCount(), "device query")
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"no usable CUDA GPU: {exc}; TensorRT engines are built and run on the GPU machine itself"
        ) from None
    if count <= device_index:
        raise BackendUnavailableError(f"no CUDA GPU {device_index} on this machine ({count} found)")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device_index), "device properties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(name.strip("\x00 "), f"{props.major}.{props.minor}", trt.__version__)


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on; equal keys mean the cached engine can run."""

    component: str
    precision: str
    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    profile: dict[str, list[int]]

    @classmethod
    def for_component(
        cls, component: str, spec: ComponentSpec, onnx_sha256: str, device: DeviceInfo, profile: ProfileConfig
    ) -> "EngineKey":
        used = {d for t in spec.inputs for d in t.shape if isinstance(d, str)}
        return cls(
            component,
            spec.precision,
            onnx_sha256,
            device.gpu_name,
            device.compute_capability,
            device.tensorrt_version,
            {n: r for n, r in profile.to_dict().items() if n in used},
        )

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """Human-readable fields where a recorded key differs from this one."""
        return [
            f"{name} {recorded.get(name)!r} (needed: {value!r})"
            for name, value in asdict(self).items()
            if recorded.get(name) != value
        ]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


class EngineCache:
    """A folder of engines, one per (component, precision), each with a JSON record of its key.

    The record is written after the engine, and holds the engine's sha256: an engine without a
    matching record (interrupted write, copied from elsewhere) is never trusted.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def engine_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.component}.{key.precision}.engine"

    def record_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.component}.{key.precision}.json"

    def timing_cache_path(self, device: DeviceInfo) -> Path:
        """One timing cache per GPU model and TensorRT version, shared by every engine built there."""
        return (
            self.folder
            / f"timing-{_slug(device.gpu_name)}-sm{device.compute_capability}-trt{device.tensorrt_version}.cache"
        )

    def problem(self, key: EngineKey) -> str | None:
        """Why the cached engine for `key` cannot be used, or None when it can."""
        engine, record = self.engine_path(key), self.record_path(key)
        if not engine.is_file():
            return "no engine built yet"
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
            recorded_key, recorded_sha = recorded["key"], recorded["engine_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{record.name} is missing or unreadable, so the engine's origin is unknown"
        differences = key.differences(recorded_key)
        if differences:
            return "built for another configuration: " + "; ".join(differences)
        if sha256_file(engine) != recorded_sha:
            return f"{engine.name} does not match its recorded sha256 (corrupt or partly written)"
        return None

    def store(self, key: EngineKey, engine_bytes: bytes, build_info: dict[str, Any]) -> Path:
        """Write the engine, then its record, each atomically."""
        path = self.engine_path(key)
        write_bytes_atomic(path, engine_bytes)
        record = {"key": asdict(key), "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(), "build": build_info}
        write_bytes_atomic(self.record_path(key), (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        return path


def default_cache_folder(bundle_dir: Path) -> Path:
    """`<bundle>.engines/` beside the bundle: device-local, outside the hashed bundle files."""
    bundle_dir = Path(bundle_dir).resolve()
    return bundle_dir.parent / f"{bundle_dir.name}.engines"


PRECISION_COUNTS = ("quantize", "dequantize", "fp16_tensors")


def check_precision(precision: str, counts: dict[str, int], source: str) -> None:
    """A graph's Q/DQ and fp16 tensor counts must match the precision its engine is built for;
    otherwise the engine would silently run at another precision than the one asked for."""
    has_qdq = counts["quantize"] > 0 or counts["dequantize"] > 0
    has_fp16 = counts["fp16_tensors"] > 0
    expected = {"fp32": (False, False), "fp16": (False, True), "int8": (True, None)}
    if precision not in expected:
        raise EngineError(f"unknown engine precision {precision!r}; choose one of {', '.join(expected)}")
    want_qdq, want_fp16 = expected[precision]
    if has_qdq != want_qdq or (want_fp16 is not None and has_fp16 != want_fp16):
        raise EngineError(
            f"{source} is not a {precision} graph ({counts['quantize']} Quantize, "
            f"{counts['dequantize']} Dequantize, {counts['fp16_tensors']} fp16 tensors); "
            "build its variant with `python export/build_engines.py --add-to BUNDLE --precision ...`"
        )


def network_precision_counts(trt, network) -> dict[str, int]:
    """Q/DQ layers and fp16 tensors of a parsed (strongly typed) TensorRT network."""
    counts = dict.fromkeys(PRECISION_COUNTS, 0)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        counts["quantize"] += layer.type == trt.LayerType.QUANTIZE
        counts["dequantize"] += layer.type == trt.LayerType.DEQUANTIZE
        counts["fp16_tensors"] += sum(layer.get_output(i).dtype == trt.DataType.HALF for i in range(layer.num_outputs))
    return counts


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings shared by every engine of a bundle."""

    profile: ProfileConfig = field(default_factory=ProfileConfig)
    workspace_gb: float = DEFAULT_WORKSPACE_GB


def build_engine(onnx_path: Path, spec: ComponentSpec, options: BuildOptions, timing_cache: Path) -> tuple[bytes, dict]:
    """Parse the ONNX from its path, build a serialized engine; returns (engine bytes, build info)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path.name}: {errors or 'no parser message'}")
    counts = network_precision_counts(trt, network)
    check_precision(spec.precision, counts, onnx_path.name)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if spec.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 engines are the parity reference: no TF32 matmuls
    shapes = profile_shapes(spec.inputs, options.profile)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, p in shapes.items():
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    write_bytes_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    info = {
        "precision_counts": counts,
        "profile": {n: asdict(p) for n, p in shapes.items()},
        "workspace_gb": options.workspace_gb,
        "strongly_typed": strongly_typed is not None,
    }
    return bytes(memoryview(serialized)), info


def engine_io_names(engine) -> list[str]:
    return [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]


@dataclass
class LoadedEngine:
    """A deserialized engine with the TensorRT runtime that must outlive it, and its cache key."""

    engine: Any
    runtime: Any
    key: EngineKey


def deserialize(engine_path: Path, spec: ComponentSpec, key: EngineKey) -> LoadedEngine | None:
    """Deserialize an engine and check its tensors are the component's; None when TensorRT refuses it."""
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        return None
    expected = sorted(t.name for t in [*spec.inputs, *spec.outputs])
    if sorted(engine_io_names(engine)) != expected:
        raise EngineError(
            f"{engine_path.name} has tensors {sorted(engine_io_names(engine))}, the bundle's graph "
            f"{expected}: delete {engine_path.parent} and run again to rebuild"
        )
    return LoadedEngine(engine, runtime, key)


def load_or_build(
    component: str,
    bundle_dir: Path,
    spec: ComponentSpec,
    onnx_sha256: str,
    cache: EngineCache,
    options: BuildOptions,
    device: DeviceInfo | None = None,
    allow_build: bool = True,
) -> LoadedEngine:
    """The component's engine from the cache, rebuilt from the bundle's ONNX when missing, stale or corrupt."""
    device = device or current_device()
    key = EngineKey.for_component(component, spec, onnx_sha256, device, options.profile)
    problem = cache.problem(key)
    loaded = None if problem else deserialize(cache.engine_path(key), spec, key)
    if loaded is not None:
        return loaded
    problem = problem or "TensorRT refused to deserialize it"
    onnx_path = Path(bundle_dir) / spec.file
    if not allow_build or not onnx_path.is_file():
        why = "building is disabled" if not allow_build else f"{onnx_path} is missing"
        raise EngineError(f"cannot use the cached {component} engine ({problem}) and cannot rebuild it: {why}")
    LOG.warning(
        "building the %s %s TensorRT engine (%s); this takes minutes once per device",
        component,
        spec.precision,
        problem,
    )
    engine_bytes, info = build_engine(onnx_path, spec, options, cache.timing_cache_path(device))
    path = cache.store(key, engine_bytes, info)
    loaded = deserialize(path, spec, key)
    if loaded is None:
        raise EngineError(f"TensorRT cannot deserialize the engine it just built for {component}: {path}")
    return loaded
