"""APRIL-GAN few-shot as a post-stage: a memory bank of k normal images and the map it adds.

`FewShot` is mixed into a pipeline (the runtime Detector and the PyTorch reference) so both
build, load and calibrate banks through one API; each computes the distance map with its own
arithmetic (`few_shot_map`), and attaching a bank adds that map after the heads and switches the
image score to the few-shot rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..contract import IMAGE_ENCODER, METHODS
from ..errors import BundleError, ZsadEdgeError
from ..image_io import list_images
from ..stopping import NEVER, Stopped, StopRequest
from .memory_bank import MemoryBank, default_map_max_range

FEW_SHOT_RULE = "prompt_and_map_mean"


@dataclass
class FewShotStage:
    """Adds the memory-bank distance map (computed by the host pipeline) to the zero-shot map."""

    distance_map: Callable[[Any], np.ndarray]

    def __call__(self, features: Any, maps: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return maps + self.distance_map(features), scores


class FewShot:
    """Memory-bank API for a DetectionPipeline; the host supplies taps_as_numpy and few_shot_map."""

    memory_bank: MemoryBank | None = None

    def taps_as_numpy(self, features: Any) -> np.ndarray:
        """The raw tap tokens [B, n_taps, N, width] from `encode`'s output, as float32 numpy."""
        raise NotImplementedError

    def few_shot_map(self, features: Any) -> np.ndarray:
        """Summed (1 - max cosine to the bank) per tap, upsampled to the input size [B, H, W]."""
        raise NotImplementedError

    def fit_normal(self, images: Sequence | str | os.PathLike, chunk: int = 4, stop: StopRequest = NEVER) -> MemoryBank:
        """Build and attach the memory bank from k normal images (arrays or paths), or from every
        image in a folder (a path to it), in name order.

        A stop request between chunks abandons the bank (Stopped): nothing is attached or written.
        """
        self._check_few_shot()
        if isinstance(images, (str, os.PathLike)):  # one folder or file, not a sequence of characters
            images = list_images([images])
            if not images:
                raise ZsadEdgeError("fit_normal: no image found in the folder given")
        taps = []
        for start in range(0, len(images), chunk):
            if stop.requested:
                raise Stopped(stop, start, len(images), "no memory bank written")
            taps.append(self.taps_as_numpy(self.encode(self.preprocess(images[start : start + chunk])[0])))
        self.attach_memory_bank(
            MemoryBank.from_taps(np.concatenate(taps), self.manifest.component_digest(IMAGE_ENCODER))
        )
        return self.memory_bank

    def load_memory_bank(self, path: str | os.PathLike) -> MemoryBank:
        """Attach a bank saved with `fit_normal(...).save(path)`; refused if built with another encoder."""
        self.attach_memory_bank(MemoryBank.load(path, self.manifest.component_digest(IMAGE_ENCODER)))
        return self.memory_bank

    def attach_memory_bank(self, bank: MemoryBank) -> None:
        """Add the few-shot stage and switch to few-shot scoring; the bank's calibrated constants
        (if any) replace the manifest's.

        Uncalibrated, the map peak is normalised by its theoretical bounds, and the thresholds are
        the manifest's, which a zero-shot calibration made for other maps: marked uncalibrated.
        """
        self._check_few_shot()
        self.memory_bank = bank
        uncalibrated = {"calibrated": False, "map_max_range": list(default_map_max_range(len(self.manifest.taps)))}
        self._use_scoring(
            {
                **{k: v for k, v in self.manifest.scoring.items() if k != "map_normal_median"},
                "rule": FEW_SHOT_RULE,
                **(bank.scoring or uncalibrated),
            }
        )
        self.map_stages = [s for s in self.map_stages if not isinstance(s, FewShotStage)]
        self.map_stages.append(FewShotStage(self.few_shot_map))

    def detach_memory_bank(self) -> None:
        """Back to zero-shot: the few-shot stage removed, the manifest's scoring in use again."""
        self.memory_bank = None
        self.map_stages = [s for s in self.map_stages if not isinstance(s, FewShotStage)]
        self._use_scoring(self.manifest.scoring)

    def _check_few_shot(self) -> None:
        method = self.manifest.method.get("name")
        spec = METHODS.get(method)
        if spec is None or not spec.few_shot:
            allowed = ", ".join(name for name, s in METHODS.items() if s.few_shot)
            raise BundleError(f"few-shot memory banks work with {allowed} bundles, not {method!r}")
