"""The lean runtime detector: a bundle run with onnxruntime, no torch anywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .bundle import BASE_PRECISION, REBUILD_HINT, Manifest, load_manifest
from .errors import BundleError
from .interpolation import upsample_align_corners
from .components import EngineOptions, GraphComponent, open_components
from .pipeline import ENCODER, DetectionPipeline
from .sam_predictor import SamGeometry, SamPredictor
from .smoothing import gaussian_smooth

HEADS = "heads"
FNN = "fnn"
SAM_COMPONENTS = ("sam_encoder", "sam_decoder")
SUPPORTED_METHODS = ("aprilgan_zero_shot", "sdp", "sdpplus", "fnn")


def _check_input_size(encoder: GraphComponent, input_size: tuple[int, int]) -> None:
    """The graph must take the image size the manifest preprocesses to, or every frame would fail."""
    graph_size = tuple(encoder.input_shapes.get("image", [])[2:])
    if graph_size != tuple(input_size):
        raise BundleError(
            f"{encoder.name} expects images of {list(graph_size)} but the manifest preprocesses to "
            f"{list(input_size)}: mismatched graph and manifest; {REBUILD_HINT}"
        )


class Detector(DetectionPipeline):
    """Runs a bundle's image encoder and heads graphs (and the FNN graph of the FNN method).

    Usage: `Detector.from_bundle("bundle/")(image)` -> DetectionResult.
    """

    def __init__(self, bundle_dir: Path, manifest: Manifest, encoder: GraphComponent, heads: GraphComponent,
                 fnn: GraphComponent | None = None) -> None:
        super().__init__(manifest)
        self.bundle_dir = bundle_dir
        self.encoder = encoder
        self.heads_graph = heads
        self.fnn_graph = fnn

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path, backend: str = "auto", verify: bool = True,
                    intra_op_threads: int | None = None, precision: str = BASE_PRECISION,
                    engines: EngineOptions | None = None) -> "Detector":
        """Load a bundle; verify=True checks every file's sha256 against the manifest first.

        backend: an onnxruntime backend (auto, cpu, cuda, ort-tensorrt) or "tensorrt" (native
        engines, built from the bundle's ONNX into `engines.cache_folder` on first use).
        precision: "fp32" or one of the bundle's variants (`manifest.precisions`, e.g. "int8").
        """
        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir, verify_hashes=verify).with_precision(precision)
        method = manifest.method.get("name")
        if method not in SUPPORTED_METHODS:
            raise BundleError(f"bundle method {method!r} is not supported by this runtime ({', '.join(SUPPORTED_METHODS)})")
        sam_params = manifest.method.get("params", {}).get("sam")  # CLIP-SAM bundles
        names = [ENCODER, HEADS] + ([FNN] if method == "fnn" else []) + (list(SAM_COMPONENTS) if sam_params else [])
        for name in names:
            if name not in manifest.components:
                raise BundleError(f"bundle has no {name!r} component; {REBUILD_HINT}")
        graphs = open_components(bundle_dir, manifest, names, backend, intra_op_threads, engines)
        _check_input_size(graphs[ENCODER], manifest.preprocess.input_size)
        detector = cls(bundle_dir, manifest, graphs[ENCODER], graphs[HEADS], graphs.get(FNN))
        if sam_params:
            detector.sam = SamPredictor(*(graphs[name] for name in SAM_COMPONENTS), SamGeometry.from_params(sam_params))
        return detector

    @property
    def providers(self) -> list[str]:
        """Execution providers actually bound (not merely requested)."""
        return self.encoder.providers

    def encode(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.encoder.run({"image": batch})

    def taps_as_numpy(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return features["taps"]

    def heads(self, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = self.heads_graph.run(features)
        maps, scores = out["anomaly_map"], out["image_score"]
        if self.fnn_graph is not None:
            fnn = self.fnn_graph.run(features)
            maps, scores = self.fuse_fnn((maps, scores), (fnn["anomaly_map"], fnn["image_score"]))
        if self.memory_bank is not None:
            grid = self.memory_bank.distances(features["taps"]).reshape(-1, *self.manifest.patch_grid)
            maps = maps + upsample_align_corners(grid, self.manifest.preprocess.input_size)
        return maps, scores

    def smooth(self, maps: np.ndarray) -> np.ndarray:
        return gaussian_smooth(maps, self.gaussian_sigma)

    def resize_maps(self, maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        # INTER_LINEAR uses half-pixel centres without antialiasing, the same sampling as
        # torch's bilinear interpolate(align_corners=False) used by the reference.
        return [cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m, (h, w) in zip(maps, sizes)]
