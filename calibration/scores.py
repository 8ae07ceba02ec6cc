"""Score and threshold calibration from normal images, stored in the bundle's manifest.

The published methods normalise scores with the min and max over the whole TEST set, which a
camera station scoring one frame at a time cannot know. Here the constants come from a folder
of normal images instead: the range of image scores and of per-image map maxima (for methods
that min-max normalise), and default thresholds at chosen quantiles of the normal statistics
(quantile 1.0 = the largest value seen on a normal image, so none of them is flagged).
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from tqdm import tqdm

from zsad_edge.runtime.bundle import MANIFEST_NAME, Manifest
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import ImageReadError, ZsadEdgeError
from zsad_edge.runtime.image_io import read_image, to_rgb_float, write_bytes_atomic
from zsad_edge.runtime.pipeline import DetectionPipeline

MIN_CALIBRATION_IMAGES = 2
PIXEL_SAMPLES_PER_IMAGE = 20_000


def calibrate_scores(detector: DetectionPipeline, images: Sequence, image_quantile: float = 1.0,
                     pixel_quantile: float = 0.999, seed: int = 0, progress: bool = True) -> dict:
    """Scoring constants from normal images (paths or arrays); unreadable files are listed, not fatal.

    Pixel statistics use a fixed-size random sample of each map so that memory stays bounded
    for large calibration folders at full resolution.
    """
    for name, q in (("image_quantile", image_quantile), ("pixel_quantile", pixel_quantile)):
        if not 0.0 < q <= 1.0:
            raise ZsadEdgeError(f"{name} must be in (0, 1], got {q}")
    rng = np.random.default_rng(seed)
    scores, map_maxima, pixels, skipped = [], [], [], []
    for image in tqdm(images, desc="calibrate", unit="img", disable=not progress):
        try:
            rgb = to_rgb_float(read_image(image) if not isinstance(image, np.ndarray) else image)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        result = detector(rgb)
        scores.append(result.score)
        map_maxima.append(float(result.anomaly_map.max()))
        flat = result.anomaly_map.ravel()
        if flat.size > PIXEL_SAMPLES_PER_IMAGE:
            flat = flat[rng.choice(flat.size, PIXEL_SAMPLES_PER_IMAGE, replace=False)]
        pixels.append(flat)
    if len(scores) < MIN_CALIBRATION_IMAGES:
        raise ZsadEdgeError(f"calibration needs at least {MIN_CALIBRATION_IMAGES} readable normal images, got {len(scores)}"
                            + (f" ({'; '.join(skipped)})" if skipped else ""))
    all_pixels = np.concatenate(pixels)
    return {
        "image_threshold": float(np.quantile(scores, image_quantile)),
        "map_threshold": float(np.quantile(all_pixels, pixel_quantile)),
        "image_score_range": [float(min(scores)), float(max(scores))],
        "map_max_range": [float(min(map_maxima)), float(max(map_maxima))],
        "calibrated": True,
        "calibration": {"images": len(scores), "skipped": skipped, "image_quantile": image_quantile,
                        "pixel_quantile": pixel_quantile},
    }


def write_scoring(bundle_dir, manifest: Manifest, scoring: dict) -> None:
    """Merge `scoring` into the manifest and replace manifest.json in one rename.

    Only the manifest changes (it is not itself hashed), so graph hashes stay valid.
    """
    manifest.scoring = {**manifest.scoring, **scoring}
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    write_bytes_atomic(bundle_dir / MANIFEST_NAME, text.encode("utf-8"))


def calibrate_with_memory_bank(detector: "Detector", images: Sequence, image_quantile: float = 1.0, pixel_quantile: float = 0.999,
                               progress: bool = True) -> dict:
    """Calibrate a few-shot detector; the result belongs in its memory bank file.

    Two passes because the few-shot image score normalises the map maximum by the very range being
    calibrated: the first pass fixes that range (maps do not depend on it), the second sets the
    thresholds on the scores as they will be computed from then on.
    """
    first = calibrate_scores(detector, images, image_quantile, pixel_quantile, progress=progress)
    detector.memory_bank.scoring = {"map_max_range": first["map_max_range"]}
    scoring = calibrate_scores(detector, images, image_quantile, pixel_quantile, progress=progress)
    detector.memory_bank.scoring = scoring
    detector.attach_memory_bank(detector.memory_bank)  # the detector now uses the calibrated thresholds
    return scoring
