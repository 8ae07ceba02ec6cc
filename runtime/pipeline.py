"""The staged detection pipeline shared by the runtime Detector and the PyTorch reference.

Both run preprocess -> encode -> heads -> postprocess with the same stage names, so benchmarks time
the same stages on each side and parity tests compare like with like. Subclasses supply the
model stages and the map smoothing; preprocessing, the image-score rule and result assembly are
shared.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .bundle import Manifest
from .clip_sam import CascadeConfig, Predictor, SamRefinement, refine
from .errors import BundleError
from .image_io import check_image, read_image, to_rgb_float
from .memory_bank import MemoryBank, default_map_max_range
from .preprocess import preprocess_batch
from .scoring import score_rule
from .stopping import NEVER, StopRequest, Stopped

ENCODER = "image_encoder"
# Methods whose encoder exposes the raw tap tokens a few-shot memory bank is made of.
FEW_SHOT_METHODS = ("aprilgan_zero_shot",)
FEW_SHOT_RULE = "prompt_and_map_mean"

ImageInput = np.ndarray | str | os.PathLike
# Files are decoded reduced only while their shorter side stays >= this many model input sides.
REDUCED_DECODE_MARGIN = 4


@dataclass
class DetectionResult:
    """One image's verdict.

    anomaly_map: float32 at the ORIGINAL image size (H x W); mask: anomaly_map > the bundle's
    map threshold; score: image-level anomaly score; is_anomalous: score > image threshold.
    Strict comparisons: a threshold calibrated as the largest normal value flags no normal image.
    text_score and map_peak are the raw parts the score was combined from (calibration uses them).
    refinement: CLIP-SAM bundles only, for images flagged anomalous: SAM's mask and the fused map.
    """

    score: float
    anomaly_map: np.ndarray
    mask: np.ndarray
    is_anomalous: bool
    text_score: float
    map_peak: float
    refinement: SamRefinement | None = None

    @property
    def final_map(self) -> np.ndarray:
        """The map to judge pixels by: SAM-refined where the bundle refines, else CLIP's."""
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
            **({"sam_mask_fraction": float(self.refinement.mask.mean()), "sam_regions": self.refinement.regions}
               if self.refinement is not None else {}),
            "height": int(self.anomaly_map.shape[0]),
            "width": int(self.anomaly_map.shape[1]),
        }


class DetectionPipeline(ABC):
    """Template for a detector: the model stages are abstract, the rest is shared.

    A few-shot memory bank (APRIL-GAN) is held here too, so the runtime and the reference build,
    load and calibrate banks through one API; each searches it with its own arithmetic in `heads`.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.memory_bank: MemoryBank | None = None
        params = manifest.method.get("params", {})
        self.gaussian_sigma = float(params.get("gaussian_sigma", 0.0))
        self.fusion_weight = float(params.get("fusion_weight", 0.0))
        self._use_scoring(manifest.scoring)
        self.sam: Predictor | None = None  # CLIP-SAM bundles: set by the subclass from the bundle
        self.cascade = CascadeConfig.from_params(params["sam"]["cascade"]) if "sam" in params else None

    def _use_scoring(self, scoring: dict) -> None:
        self.scoring = scoring
        self.score_rule = score_rule(scoring.get("rule", "prompt"))
        self.map_threshold = float(scoring["map_threshold"])
        self.image_threshold = float(scoring["image_threshold"])

    @abstractmethod
    def taps_as_numpy(self, features: Any) -> np.ndarray:
        """The raw tap tokens [B, n_taps, N, width] from `encode`'s output, as float32 numpy."""

    def fit_normal(self, images: Sequence[ImageInput], chunk: int = 4, stop: StopRequest = NEVER) -> MemoryBank:
        """Build and attach the few-shot memory bank from k normal images (arrays or paths).

        A stop request between chunks abandons the bank (Stopped): nothing is attached or written.
        """
        self._check_few_shot()
        taps = []
        for start in range(0, len(images), chunk):
            if stop.requested:
                raise Stopped(stop, start, len(images), "no memory bank written")
            taps.append(self.taps_as_numpy(self.encode(self.preprocess(images[start:start + chunk])[0])))
        self.attach_memory_bank(MemoryBank.from_taps(np.concatenate(taps), self.manifest.component_digest(ENCODER)))
        return self.memory_bank

    def load_memory_bank(self, path: str | os.PathLike) -> MemoryBank:
        """Attach a bank saved with `fit_normal(...).save(path)`; refused if built with another encoder."""
        self.attach_memory_bank(MemoryBank.load(path, self.manifest.component_digest(ENCODER)))
        return self.memory_bank

    def attach_memory_bank(self, bank: MemoryBank) -> None:
        """Switch to few-shot scoring; the bank's calibrated constants (if any) replace the manifest's.

        Uncalibrated, the map peak is normalised by its theoretical bounds, and the thresholds are
        the manifest's, which a zero-shot calibration made for other maps: marked uncalibrated.
        """
        self._check_few_shot()
        self.memory_bank = bank
        uncalibrated = {"calibrated": False, "map_max_range": list(default_map_max_range(len(self.manifest.taps)))}
        self._use_scoring({**{k: v for k, v in self.manifest.scoring.items() if k != "map_normal_median"},
                           "rule": FEW_SHOT_RULE, **(bank.scoring or uncalibrated)})

    def _check_few_shot(self) -> None:
        method = self.manifest.method.get("name")
        if method not in FEW_SHOT_METHODS:
            raise BundleError(f"few-shot memory banks work with {', '.join(FEW_SHOT_METHODS)} bundles, "
                              f"not {method!r}")

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """Decode an image file; one far larger than the model input is decoded reduced (image_io)."""
        return read_image(path, keep_side=REDUCED_DECODE_MARGIN * max(self.manifest.preprocess.input_size))

    def load(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Images (arrays of any layout, or paths) -> checked arrays in their own dtype and layout.

        Not converted to float here: 8-bit images must reach the resize as 8-bit to get the
        official input tensor (runtime/preprocess.py).
        """
        return [check_image(self.read(im) if isinstance(im, (str, os.PathLike)) else im) for im in images]

    def preprocess(self, images: Sequence[ImageInput]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Images (arrays or paths) -> normalised NCHW batch and each image's original (H, W)."""
        loaded = self.load(images)
        return preprocess_batch(loaded, self.manifest.preprocess), [im.shape[:2] for im in loaded]

    @abstractmethod
    def encode(self, batch: np.ndarray) -> Any:
        """Run the image encoder; returns whatever `heads` consumes."""

    @abstractmethod
    def heads(self, features: Any) -> tuple[np.ndarray, np.ndarray]:
        """Features -> (anomaly maps [B, H_in, W_in] at model input size, prompt scores [B])."""

    def fuse_fnn(self, prompt: tuple[np.ndarray, np.ndarray], fnn: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """FNN method: weighted mean of the prompt and FNN (map, score) pairs, both probabilities."""
        weight = self.fusion_weight
        return tuple((1.0 - weight) * p + weight * f for p, f in zip(prompt, fnn))

    @abstractmethod
    def smooth(self, maps: np.ndarray) -> np.ndarray:
        """Gaussian smoothing of model-size maps with `gaussian_sigma` (0: none), as the method specifies."""

    @abstractmethod
    def resize_maps(self, maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Bilinearly resize each model-size map back to its image's original size."""

    def synchronize(self) -> None:
        """Wait for queued device work; stage timings call it. Host-synchronous backends need nothing."""

    def postprocess(self, maps: np.ndarray, text_scores: np.ndarray,
                    sizes: Sequence[tuple[int, int]]) -> list[DetectionResult]:
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

    def refine(self, results: list[DetectionResult], images: Sequence[np.ndarray]) -> None:
        """CLIP-SAM: run the SAM cascade on every image flagged anomalous (the rest need no outline)."""
        threshold = self.cascade.region_threshold
        threshold = self.map_threshold if threshold is None else threshold
        for result, image in zip(results, images):
            if result.is_anomalous:
                result.refinement = refine(self.sam, to_rgb_float(image), result.anomaly_map, threshold, self.cascade)

    def detect_batch(self, images: Sequence[ImageInput], refine: bool = True) -> list[DetectionResult]:
        """Run a batch of images of any sizes through all stages in one model call.

        refine=False skips CLIP-SAM refinement (calibration needs only the CLIP scores).
        """
        loaded = self.load(images)
        batch, sizes = self.preprocess(loaded)
        maps, text_scores = self.heads(self.encode(batch))
        results = self.postprocess(maps, text_scores, sizes)
        if refine and self.sam is not None:
            self.refine(results, loaded)
        return results

    def __call__(self, image: ImageInput) -> DetectionResult:
        return self.detect_batch([image])[0]
