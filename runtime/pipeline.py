"""The staged detection pipeline shared by the runtime Detector and the PyTorch reference.

Both run preprocess -> encode -> heads -> postprocess with the same stage names, so benchmarks time
the same stages on each side and parity tests compare like with like. Subclasses supply the
model stages and the map smoothing; preprocessing, the image-score rule and result assembly are
shared. What a method or the user adds after the heads (FNN fusion, a few-shot memory bank,
CLIP-SAM refinement) is a post-stage (runtime/stages/), so this module knows no method.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import cv2
import numpy as np

from .bundle import Manifest
from .image_io import check_image, read_image
from .preprocess import preprocess_batch
from .scoring import score_rule
from .smoothing import gaussian_smooth
from .stages import MapStage, ResultStage

ImageInput = np.ndarray | str | os.PathLike
# Files are decoded reduced only while their shorter side stays >= this many model input sides.
REDUCED_DECODE_MARGIN = 4


def decode_keep_side(manifest: Manifest) -> int:
    """The shorter side a reduced decode keeps for this bundle (image_io.read_image's keep_side)."""
    return REDUCED_DECODE_MARGIN * max(manifest.preprocess.input_size)


class Refinement(Protocol):
    """What a result stage may attach to a result: a refined mask and map (CLIP-SAM)."""

    mask: np.ndarray
    anomaly_map: np.ndarray
    regions: int


@dataclass
class DetectionResult:
    """One image's verdict.

    anomaly_map: float32 at the ORIGINAL image size (H x W); mask: anomaly_map > the bundle's
    map threshold; score: image-level anomaly score; is_anomalous: score > image threshold.
    Strict comparisons: a threshold calibrated as the largest normal value flags no normal image.
    text_score and map_peak are the raw parts the score was combined from (calibration uses them).
    refinement: set by a result stage (CLIP-SAM, for images flagged anomalous): its mask and map.
    """

    score: float
    anomaly_map: np.ndarray
    mask: np.ndarray
    is_anomalous: bool
    text_score: float
    map_peak: float
    refinement: Refinement | None = None

    @property
    def final_map(self) -> np.ndarray:
        """The map to judge pixels by: the refined one where a stage refined it, else CLIP's."""
        return self.refinement.anomaly_map if self.refinement is not None else self.anomaly_map

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no arrays) for reports."""
        return {
            "score": self.score,
            "is_anomalous": self.is_anomalous,
            "text_score": self.text_score,
            "map_peak": self.map_peak,
            "map_max": float(self.anomaly_map.max()),
            "map_mean": float(self.anomaly_map.mean()),
            "mask_fraction": float(self.mask.mean()),
            **(
                {"sam_mask_fraction": float(self.refinement.mask.mean()), "sam_regions": self.refinement.regions}
                if self.refinement is not None
                else {}
            ),
            "height": int(self.anomaly_map.shape[0]),
            "width": int(self.anomaly_map.shape[1]),
        }


class MapScoring(ABC):
    """From model-size maps and prompt scores to verdicts: smoothing, the image-score rule,
    resizing to each original size, thresholds. Needs only the manifest, so a Triton ensemble's
    post-processing model (serving/ensemble_models.py) runs it without the graphs."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.gaussian_sigma = float(manifest.method.get("params", {}).get("gaussian_sigma", 0.0))
        self._use_scoring(manifest.scoring)

    def _use_scoring(self, scoring: dict) -> None:
        self.scoring = scoring
        self.score_rule = score_rule(scoring.get("rule", "prompt"))
        self.map_threshold = float(scoring["map_threshold"])
        self.image_threshold = float(scoring["image_threshold"])

    @property
    def decode_keep_side(self) -> int:
        """Encoded images are decoded reduced while their shorter side stays at least this (image_io)."""
        return decode_keep_side(self.manifest)

    @abstractmethod
    def smooth(self, maps: np.ndarray) -> np.ndarray:
        """Gaussian smoothing of model-size maps with `gaussian_sigma` (0: none), as the method specifies."""

    @abstractmethod
    def resize_maps(self, maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Bilinearly resize each model-size map back to its image's original size."""

    def postprocess(
        self, maps: np.ndarray, text_scores: np.ndarray, sizes: Sequence[tuple[int, int]]
    ) -> list[DetectionResult]:
        """Maps at model size -> smoothed, scored, resized to each original size and thresholded."""
        maps = self.smooth(maps) if self.gaussian_sigma > 0 else maps
        peaks = maps.max(axis=(1, 2))
        scores = self.score_rule.combine(text_scores, peaks, self.scoring)
        return [
            DetectionResult(
                score=float(score),
                anomaly_map=full,
                mask=full > self.map_threshold,
                is_anomalous=bool(score > self.image_threshold),
                text_score=float(text),
                map_peak=float(peak),
            )
            for full, score, text, peak in zip(self.resize_maps(maps, sizes), scores, text_scores, peaks)
        ]


class NumpyMaps(MapScoring):
    """Smoothing and resizing in numpy and OpenCV: the runtime's (the reference does them in torch)."""

    def smooth(self, maps: np.ndarray) -> np.ndarray:
        return gaussian_smooth(maps, self.gaussian_sigma)

    def resize_maps(self, maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        # INTER_LINEAR uses half-pixel centres without antialiasing, the same sampling as
        # torch's bilinear interpolate(align_corners=False) used by the reference.
        return [cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m, (h, w) in zip(maps, sizes)]


class DetectionPipeline(MapScoring):
    """Template for a detector: the model stages are abstract, the rest is shared.

    map_stages run after the heads, result_stages on the results (runtime/stages/).
    """

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.map_stages: list[MapStage] = []
        self.result_stages: list[ResultStage] = []

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """Decode an image file; one far larger than the model input is decoded reduced (image_io)."""
        return read_image(path, keep_side=self.decode_keep_side)

    def load(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Images (arrays of any layout, or paths) -> checked arrays in their own dtype and layout.

        Not converted to float here: 8-bit images must reach the resize as 8-bit to get the
        official input tensor (runtime/preprocess.py).
        """
        return [check_image(self.read(im) if isinstance(im, (str, os.PathLike)) else im) for im in images]

    def preprocess(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Images (arrays or paths) -> normalised NCHW batch and each image's original (H, W)."""
        return self.preprocess_loaded(self.load(images))

    def preprocess_loaded(self, loaded: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """`preprocess` for images already through `load` (not checked again: a float image's check
        reads every pixel)."""
        return preprocess_batch(loaded, self.manifest.preprocess), [im.shape[:2] for im in loaded]

    @abstractmethod
    def encode(self, batch: np.ndarray) -> Any:
        """Run the image encoder; returns whatever `heads` consumes."""

    @abstractmethod
    def heads(self, features: Any) -> tuple[np.ndarray, np.ndarray]:
        """Features -> (anomaly maps [B, H_in, W_in] at model input size, prompt scores [B]) as numpy."""

    def post_heads(self, features: Any, maps: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The map stages, in order (FNN fusion, few-shot memory bank)."""
        for stage in self.map_stages:
            maps, scores = stage(features, maps, scores)
        return maps, scores

    def synchronize(self) -> None:
        """Wait for queued device work; stage timings call it. Host-synchronous backends need nothing."""

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A preprocessed batch -> (model-size maps, prompt scores): encoder, heads and map stages.

        The one step that runs the model; the station runs it on its own thread while the next
        batch is preprocessed and the previous one post-processed (onnxruntime releases the GIL).
        """
        features = self.encode(batch)
        return self.post_heads(features, *self.heads(features))

    # The three steps a station runs on its three threads (station.py); a RemoteDetector
    # (serving/remote.py) implements them too, with the server call as `run`.
    def prepare(self, loaded: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Loaded images -> what `run` takes: the preprocessed batch and the original sizes."""
        return self.preprocess_loaded(loaded)

    def run(self, prepared: tuple[np.ndarray, list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray, list]:
        """The model call: (maps, prompt scores, sizes)."""
        batch, sizes = prepared
        maps, scores = self.infer(batch)
        return maps, scores, sizes

    def results(self, inferred: tuple[np.ndarray, np.ndarray, list]) -> list[DetectionResult]:
        """The model's output -> results (without result stages: `refine` runs those)."""
        return self.postprocess(*inferred)

    def refine(self, results: list[DetectionResult], loaded: Sequence[np.ndarray]) -> list[DetectionResult]:
        """The result stages, in order (CLIP-SAM), on results made from the `loaded` images."""
        for stage in self.result_stages:
            stage(results, loaded)
        return results

    def score_batch(self, images: Sequence[ImageInput]) -> list[DetectionResult]:
        """Scores, maps and verdicts of a batch in one model call, without result stages.

        Calibration and drift measurement use this: a refinement (CLIP-SAM) does not change scores.
        """
        return self._score_loaded(self.load(images))

    def detect_batch(self, images: Sequence[ImageInput]) -> list[DetectionResult]:
        """Run a batch of images of any sizes through every stage, result stages included."""
        loaded = self.load(images)
        return self.refine(self._score_loaded(loaded), loaded)

    def _score_loaded(self, loaded: Sequence[np.ndarray]) -> list[DetectionResult]:
        batch, sizes = self.preprocess_loaded(loaded)
        return self.postprocess(*self.infer(batch), sizes)

    def __call__(self, image: ImageInput) -> DetectionResult:
        return self.detect_batch([image])[0]
