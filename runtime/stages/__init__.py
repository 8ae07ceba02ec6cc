"""Post-stages: what runs after a method's heads, composed onto the plain pipeline.

The base pipeline is preprocess -> encode -> heads -> postprocess and knows no method. A bundle's
method spec (runtime/contract.py) and what the user attaches add stages:
- a map stage, `(features, maps, scores) -> (maps, scores)`, runs after the heads and before
  smoothing and scoring: FNN fusion (fnn_fusion.py), the few-shot memory bank (few_shot.py);
- a result stage, `(results, images) -> None`, runs on the verdicts: CLIP-SAM refinement of the
  images flagged anomalous (runtime/sam/cascade.py).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np


class MapStage(Protocol):
    def __call__(self, features: Any, maps: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ResultStage(Protocol):
    def __call__(self, results: Sequence[Any], images: Sequence[np.ndarray]) -> None: ...
