"""The random-word FNN method's post-stage: fuse the FNN's (map, score) with the prompt's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class FnnFusion:
    """(1 - weight) * prompt + weight * FNN, for map and score alike (both are probabilities).

    scorer: the FNN on the encoder's features -> (maps [B, H, W], scores [B]) as numpy; the runtime
    runs its graph, the reference its torch module. weight 1 is the FNN alone.
    """

    scorer: Callable[[Any], tuple[np.ndarray, np.ndarray]]
    weight: float

    def __call__(self, features: Any, maps: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fnn_maps, fnn_scores = self.scorer(features)
        return (1.0 - self.weight) * maps + self.weight * fnn_maps, (
            1.0 - self.weight
        ) * scores + self.weight * fnn_scores
