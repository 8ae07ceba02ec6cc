"""Opening a bundle's graphs on the chosen backend: onnxruntime (CPU, CUDA, its TensorRT provider),
OpenVINO (Intel CPUs, iGPUs, NPUs) or native TensorRT engines. All give components with the same
`run(feeds) -> outputs` interface, so the detector and the SAM predictor never know which one runs
them.

"auto" picks by rule, not by a probe: onnxruntime with every accelerator its build offers where it
offers CUDA or TensorRT; otherwise, on a CPU, OpenVINO where it is installed and runs the requested
precision (measured 1.17x onnxruntime's CPU provider at fp32 and 1.2x at int8 on ViT-B-16: README,
OpenVINO), else onnxruntime's CPU provider. The detector's `providers` say which ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from ..bundle import Manifest
from ..errors import BackendUnavailableError
from .openvino import (
    BF16,
    OPENVINO,
    OPENVINO_PRECISIONS,
    OpenVinoComponent,
    cache_folder,
    import_openvino,
    openvino_available,
)
from .ort import BACKENDS as ORT_BACKENDS
from .ort import OrtComponent, import_onnxruntime
from .trt.engine import DEFAULT_WORKSPACE_GB, default_cache_folder
from .trt.profiles import ProfileConfig, profile_shapes, shape_string

TENSORRT = "tensorrt"
BACKENDS = (*ORT_BACKENDS, OPENVINO, TENSORRT)
_ORT_TRT_PROVIDER = "TensorrtExecutionProvider"
_ORT_ACCELERATORS = ("CUDAExecutionProvider", _ORT_TRT_PROVIDER)
_FIRST_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "ort-tensorrt": _ORT_TRT_PROVIDER}


class GraphComponent(Protocol):
    """What the pipelines need of one graph, whichever backend runs it."""

    name: str
    providers: list[str]
    input_shapes: dict[str, list]
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class EngineOptions:
    """TensorRT settings, for the native backend and for onnxruntime's TensorRT provider.

    cache_folder: where engines live (default `<bundle>.engines/` beside the bundle).
    allow_build: build missing, stale or corrupt engines from the bundle's ONNX (takes minutes).
    """

    cache_folder: Path | None = None
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    workspace_gb: float = DEFAULT_WORKSPACE_GB
    allow_build: bool = True


def ort_tensorrt_options(
    manifest: Manifest, name: str, cache: Path, profile: ProfileConfig
) -> dict[str, dict[str, str]]:
    """onnxruntime's TensorRT provider: its engines and timing cache in `<cache>/onnxruntime`
    (created here), and the same profile as the native engines."""
    folder = cache / "onnxruntime"
    folder.mkdir(parents=True, exist_ok=True)
    options = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(folder),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(folder),
    }
    shapes = profile_shapes(manifest.components[name].inputs, profile)
    if shapes:
        options.update({f"trt_profile_{which}_shapes": shape_string(shapes, which) for which in ("min", "opt", "max")})
    return {_ORT_TRT_PROVIDER: options}


def open_components(
    bundle_dir: Path,
    manifest: Manifest,
    names: Sequence[str],
    backend: str,
    intra_op_threads: int | None = None,
    engines: EngineOptions | None = None,
    device: str = "CPU",
) -> dict[str, GraphComponent]:
    """Each named component of the (precision-resolved) manifest, ready to run on `backend`
    (`device`: the OpenVINO device)."""
    engines = engines or EngineOptions()
    cache = engines.cache_folder or default_cache_folder(bundle_dir)
    precisions = {manifest.components[name].precision for name in names}
    if backend == "auto":
        backend = resolve_auto(precisions)
    if backend == OPENVINO:
        return _open_openvino(bundle_dir, manifest, names, device, intra_op_threads)
    if backend == TENSORRT:
        return _open_engines(bundle_dir, manifest, names, engines, cache)
    if BF16 in precisions:
        raise BackendUnavailableError(
            f"the bf16 precision runs on the {OPENVINO} backend (a CPU with native bf16): pass --backend {OPENVINO}"
        )
    wants_trt = (
        backend in ("auto", "ort-tensorrt") and _ORT_TRT_PROVIDER in import_onnxruntime().get_available_providers()
    )
    return {
        name: OrtComponent(
            bundle_dir / manifest.components[name].file,
            backend,
            intra_op_threads,
            manifest.components[name].precision,
            ort_tensorrt_options(manifest, name, cache, engines.profile) if wants_trt else None,
        )
        for name in names
    }


def backend_of(providers: Sequence[str]) -> str:
    """The backend name (as `--backend` spells it) that the bound providers amount to, so that what
    ran is recorded, not what was asked ("auto")."""
    first = providers[0] if providers else ""
    if first.startswith("OpenVINO"):
        return OPENVINO
    if first.startswith("TensorRT "):
        return TENSORRT
    return next((name for name, wanted in _FIRST_PROVIDER.items() if wanted == first), first)


def resolve_auto(precisions: set[str]) -> str:
    """What "auto" means here (module docstring): an onnxruntime backend name or "openvino"."""
    if any(p in import_onnxruntime().get_available_providers() for p in _ORT_ACCELERATORS):
        return "auto"
    if openvino_available() and precisions <= set(OPENVINO_PRECISIONS):
        return OPENVINO
    return "auto"


def _open_openvino(
    bundle_dir: Path, manifest: Manifest, names: Sequence[str], device: str, threads: int | None
) -> dict[str, GraphComponent]:
    core = import_openvino().Core()
    cache = cache_folder(bundle_dir)
    return {
        name: OpenVinoComponent(
            bundle_dir / manifest.components[name].file,
            core,
            device,
            manifest.components[name].precision,
            threads,
            cache,
            [t.name for t in (*manifest.components[name].inputs, *manifest.components[name].outputs)],
        )
        for name in names
    }


def _open_engines(
    bundle_dir: Path, manifest: Manifest, names: Sequence[str], engines: EngineOptions, cache: Path
) -> dict[str, GraphComponent]:
    from .trt.engine import BuildOptions, EngineCache, current_device, load_or_build
    from .trt.runner import TrtComponent

    device = current_device()
    options = BuildOptions(engines.profile, engines.workspace_gb)
    components = {}
    for name in names:
        spec = manifest.components[name]
        loaded = load_or_build(
            name,
            bundle_dir,
            spec,
            manifest.component_digest(name),
            EngineCache(cache),
            options,
            device,
            engines.allow_build,
        )
        components[name] = TrtComponent(name, loaded, spec, engines.profile)
    return components
