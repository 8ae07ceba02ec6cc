"""How far a reduced-precision detector drifts from the fp32 one, and the gate that refuses too much.

INT8 ViTs can collapse silently (the graph runs, the maps are noise), so a variant is trusted only
after it is compared with fp32 on real images: per-image anomaly-map Pearson correlation (the map's
shape is what localisation uses), the largest map error relative to the fp32 map range, and the
Spearman rank agreement of image scores (what a threshold sees). The numbers go into the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from zsad_edge.runtime.comparison import pearson, relative_error, spearman
from zsad_edge.runtime.errors import ParityError, ZsadEdgeError
from zsad_edge.runtime.pipeline import DetectionPipeline, DetectionResult

MIN_DRIFT_IMAGES = 3


@dataclass(frozen=True)
class DriftTolerance:
    """Defaults: the map must keep its shape (mean Pearson 0.97) and scores their order (Spearman 0.9).

    Spearman over normal images alone is the harsh case (their scores are close together), hence a
    looser bound than the map's; None disables a check.
    """

    min_map_pearson: float | None = 0.97
    min_score_spearman: float | None = 0.9

    def to_dict(self) -> dict:
        return asdict(self)


def measure_drift(
    reference: DetectionPipeline, candidate: DetectionPipeline, images: Sequence, batch_size: int = 4
) -> dict:
    """Drift numbers of `candidate` against `reference` on the same images (paths or arrays)."""
    if len(images) < MIN_DRIFT_IMAGES:
        raise ZsadEdgeError(f"measuring precision drift needs at least {MIN_DRIFT_IMAGES} images, got {len(images)}")
    return drift_between(score_images(reference, images, batch_size), score_images(candidate, images, batch_size))


def score_images(detector: DetectionPipeline, images: Sequence, batch_size: int = 4) -> list[DetectionResult]:
    """`detector`'s results on `images`, `batch_size` at a time: score a reference once and compare
    many candidates with it (`drift_between`)."""
    results = []
    for start in range(0, len(images), batch_size):
        results.extend(detector.score_batch(images[start : start + batch_size]))
    return results


def drift_between(reference: Sequence[DetectionResult], candidate: Sequence[DetectionResult]) -> dict:
    """Drift numbers of one detector's results against another's, image by image."""
    correlations = [pearson(r.anomaly_map.ravel(), c.anomaly_map.ravel()) for r, c in zip(reference, candidate)]
    errors = [relative_error(c.anomaly_map.ravel(), r.anomaly_map.ravel()) for r, c in zip(reference, candidate)]
    ref_scores, cand_scores = [r.score for r in reference], [c.score for c in candidate]
    return {
        "images": len(correlations),
        "map_pearson_mean": float(np.mean(correlations)),
        "map_pearson_min": float(np.min(correlations)),
        "map_max_error_of_range": float(np.max(errors)),
        "score_spearman": spearman(ref_scores, cand_scores),
        "score_max_abs_error": float(np.max(np.abs(np.subtract(ref_scores, cand_scores)))),
    }


def check_drift(drift: dict, tolerance: DriftTolerance, label: str) -> None:
    """Raise ParityError naming every number that misses its bound."""
    problems = []
    if tolerance.min_map_pearson is not None and not drift["map_pearson_mean"] >= tolerance.min_map_pearson:
        problems.append(f"map Pearson {drift['map_pearson_mean']:.4f} < {tolerance.min_map_pearson}")
    if tolerance.min_score_spearman is not None and not drift["score_spearman"] >= tolerance.min_score_spearman:
        problems.append(f"score Spearman {drift['score_spearman']:.4f} < {tolerance.min_score_spearman}")
    if problems:
        raise ParityError(
            f"{label} drifts too far from fp32 on {drift['images']} images: {'; '.join(problems)} "
            f"(map max error {drift['map_max_error_of_range']:.3f} of the range, min Pearson "
            f"{drift['map_pearson_min']:.4f}); try another --calibration-method or precision, or loosen "
            "--min-map-pearson / --min-score-spearman knowingly"
        )
