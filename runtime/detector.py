"""The lean runtime detector: a bundle run with onnxruntime or TensorRT, no torch anywhere."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends.components import EngineOptions, GraphComponent, backend_of, open_components
from .bundle import BASE_PRECISION, REBUILD_HINT, Manifest, load_manifest
from .contract import (
    ANOMALY_MAP,
    FNN,
    FNN_FUSION,
    HEADS,
    IMAGE,
    IMAGE_ENCODER,
    IMAGE_SCORE,
    METHODS,
    SAM_COMPONENTS,
    TAPS,
)
from .cpu import int8_dot_product
from .errors import BundleError
from .interpolation import upsample_align_corners
from .pipeline import DetectionPipeline, NumpyMaps
from .sam.cascade import attach_sam
from .sam.predictor import SamGeometry, SamPredictor
from .stages.few_shot import FewShot
from .stages.fnn_fusion import FnnFusion


def _check_input_size(encoder: GraphComponent, input_size: tuple[int, int]) -> None:
    """The graph must take the image size the manifest preprocesses to, or every frame would fail."""
    graph_size = tuple(encoder.input_shapes.get(IMAGE, [])[2:])
    if graph_size != tuple(input_size):
        raise BundleError(
            f"{encoder.name} expects images of {list(graph_size)} but the manifest preprocesses to "
            f"{list(input_size)}: mismatched graph and manifest; {REBUILD_HINT}"
        )


LOG = logging.getLogger(__name__)
GPU_BACKENDS = ("cuda", "ort-tensorrt", "tensorrt")


def _warn_on_saturating_int8(plan: dict, precision: str) -> None:
    """8-bit int8 weights on a CPU without an int8 dot product saturate (calibration/precision.py)."""
    if plan.get("weight_bits") == 8 and int8_dot_product() is None:
        LOG.warning(
            "the %s variant has 8-bit weights, but this CPU has no VNNI, AMX or ARM dot product: its int8 sums "
            "saturate; rebuild the variant with --weight-bits 7 for this CPU",
            precision,
        )


class Detector(DetectionPipeline, NumpyMaps, FewShot):
    """Runs a bundle's graphs: image encoder, heads, and the post-stages its method and the user add.

    Usage: `Detector.from_bundle("bundle/")(image)` -> DetectionResult.
    """

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        encoder: GraphComponent,
        heads: GraphComponent,
        fnn: GraphComponent | None = None,
    ) -> None:
        super().__init__(manifest)
        self.bundle_dir = bundle_dir
        self.encoder = encoder
        self.heads_graph = heads
        self.fnn_graph = fnn
        if FNN_FUSION in METHODS[manifest.method["name"]].post_stages:
            self.map_stages.append(FnnFusion(self._run_fnn, float(manifest.method["params"]["fusion_weight"])))

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | Path,
        backend: str = "auto",
        verify: bool = True,
        intra_op_threads: int | None = None,
        precision: str = BASE_PRECISION,
        engines: EngineOptions | None = None,
        device: str = "CPU",
    ) -> "Detector":
        """Load a bundle; verify=True checks every file's sha256 against the manifest first.

        backend: an onnxruntime backend (auto, cpu, cuda, ort-tensorrt), "openvino" (on `device`:
        CPU, GPU, NPU or AUTO) or "tensorrt" (native engines, built from the bundle's ONNX into
        `engines.cache_folder` on first use); "auto" is explained in backends/components.py.
        precision: "fp32" or one of the bundle's variants (`manifest.precisions`, e.g. "int8").
        """
        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir, verify_hashes=verify, check_signature=True).with_precision(precision)
        if backend not in GPU_BACKENDS:
            _warn_on_saturating_int8(manifest.precisions.get(precision, {}).get("plan", {}), precision)
        method = manifest.method.get("name")
        if method not in METHODS:
            raise BundleError(f"bundle method {method!r} is not supported by this runtime ({', '.join(METHODS)})")
        sam_params = manifest.method.get("params", {}).get("sam")  # CLIP-SAM bundles
        names = [*METHODS[method].components, *(SAM_COMPONENTS if sam_params else ())]
        for name in names:
            if name not in manifest.components:
                raise BundleError(f"bundle has no {name!r} component; {REBUILD_HINT}")
        graphs = open_components(bundle_dir, manifest, names, backend, intra_op_threads, engines, device)
        _check_input_size(graphs[IMAGE_ENCODER], manifest.preprocess.input_size)
        detector = cls(bundle_dir, manifest, graphs[IMAGE_ENCODER], graphs[HEADS], graphs.get(FNN))
        if sam_params:
            attach_sam(
                detector, SamPredictor(*(graphs[name] for name in SAM_COMPONENTS), SamGeometry.from_params(sam_params))
            )
        return detector

    @property
    def providers(self) -> list[str]:
        """Execution providers actually bound (not merely requested)."""
        return self.encoder.providers

    @property
    def backend(self) -> str:
        """The backend that runs the graphs, as `--backend` names it ("auto" resolved)."""
        return backend_of(self.providers)

    def encode(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.encoder.run({IMAGE: batch})

    def heads(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self.heads_graph.run(features)
        return out[ANOMALY_MAP], out[IMAGE_SCORE]

    def _run_fnn(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self.fnn_graph.run(features)
        return out[ANOMALY_MAP], out[IMAGE_SCORE]

    def taps_as_numpy(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return features[TAPS]

    def few_shot_map(self, features: dict[str, np.ndarray]) -> np.ndarray:
        grid = self.memory_bank.distances(features[TAPS]).reshape(-1, *self.manifest.patch_grid)
        return upsample_align_corners(grid, self.manifest.preprocess.input_size)


@dataclass(frozen=True)
class DetectorSpec:
    """How to open a detector, as a value: a command opens its detector from it, and so does each
    Ray actor scoring an archive (runtime/archive/ray_data.py)."""

    bundle: Path
    backend: str = "auto"
    precision: str = BASE_PRECISION
    memory_bank: Path | None = None
    device: str = "CPU"
    verify: bool = True

    def open(self) -> Detector:
        detector = Detector.from_bundle(
            self.bundle, backend=self.backend, verify=self.verify, precision=self.precision, device=self.device
        )
        if self.memory_bank is not None:
            detector.load_memory_bank(self.memory_bank)
        return detector
