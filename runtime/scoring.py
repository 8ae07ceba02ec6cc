"""Image-score rules: how a method turns its two raw parts into one image score.

Every method yields a prompt score per image (the text-side probability, fused with the FNN for
that method) and an anomaly map whose peak is the second part. The published methods combine them
differently, and two of them min-max normalise over the whole TEST set, which a station scoring
one frame at a time cannot know. Here the ranges are constants in the manifest (or memory bank):
theoretical bounds until `zsad-edge calibrate` replaces them with the ranges seen on normal images.

Normalisation is linear and NOT clipped: with ranges from normal images, defects land above 1,
and clipping would tie every clear defect and lose their ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import BundleError


@dataclass(frozen=True)
class ScoreRule:
    """score = text_weight * text' + map_weight * peak', primes meaning min-max normalised by the
    calibrated range where `normalise_text` / map_weight > 0 say so."""

    text_weight: float
    map_weight: float
    normalise_text: bool

    def combine(self, text: np.ndarray, map_peak: np.ndarray, scoring: Mapping) -> np.ndarray:
        """Image scores [B] from prompt scores [B] and map peaks [B] with the ranges in `scoring`."""
        if self.normalise_text:
            text = normalise(text, scoring["text_score_range"])
        score = self.text_weight * np.asarray(text, dtype=np.float64)
        if self.map_weight:
            score = score + self.map_weight * normalise(map_peak, scoring["map_max_range"])
        return score


SCORE_RULES = {
    # APRIL-GAN zero-shot: the prompt probability alone.
    "prompt": ScoreRule(text_weight=1.0, map_weight=0.0, normalise_text=False),
    # APRIL-GAN few-shot: 0.5 * (prompt probability + normalised map peak).
    "prompt_and_map_mean": ScoreRule(text_weight=0.5, map_weight=0.5, normalise_text=False),
    # CLIP-AD SDP / SDP+: normalised prompt probability + normalised map peak.
    "normalised_sum": ScoreRule(text_weight=1.0, map_weight=1.0, normalise_text=True),
}


def score_rule(name: str) -> ScoreRule:
    if name not in SCORE_RULES:
        raise BundleError(f"unknown image score rule {name!r} in the manifest (known: {', '.join(SCORE_RULES)})")
    return SCORE_RULES[name]


def normalise(values: np.ndarray, value_range: tuple[float, float] | list[float]) -> np.ndarray:
    """(values - low) / (high - low), unclipped."""
    low, high = value_range
    return (np.asarray(values, dtype=np.float64) - low) / max(high - low, 1e-12)


def calibrated_ranges(text: np.ndarray, map_peak: np.ndarray) -> dict[str, list[float]]:
    """The ranges a rule normalises by, as seen on a set of normal images."""
    return {
        "text_score_range": [float(np.min(text)), float(np.max(text))],
        "map_max_range": [float(np.min(map_peak)), float(np.max(map_peak))],
    }
