"""Score and threshold calibration from normal images, stored in the bundle's manifest.

The published methods normalise scores with the min and max over the whole TEST set, which a
camera station scoring one frame at a time cannot know. Here the constants come from a folder
of normal images instead: the ranges of the two raw score parts (prompt score, map peak) that
the image-score rules normalise by, and default thresholds at chosen quantiles of the normal
statistics (quantile 1.0 = the largest value seen on a normal image, so none of them is flagged).
Image scores are recomputed from the raw parts with the new ranges before the threshold is
taken, so one pass suffices even when the score depends on the ranges being calibrated.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from zsad_edge.runtime.bundle import Manifest, load_manifest, write_manifest
from zsad_edge.runtime.errors import ImageReadError, ZsadEdgeError
from zsad_edge.runtime.image_io import check_image, read_image
from zsad_edge.runtime.pipeline import DetectionPipeline
from zsad_edge.runtime.scoring import calibrated_ranges
from zsad_edge.runtime.stopping import NEVER, Stopped, StopRequest

MIN_CALIBRATION_IMAGES = 2
PIXEL_SAMPLES_PER_IMAGE = 20_000


def calibrate_scores(
    detector: DetectionPipeline,
    images: Sequence,
    image_quantile: float = 1.0,
    pixel_quantile: float = 0.999,
    seed: int = 0,
    progress: bool = True,
    stop: StopRequest = NEVER,
) -> dict:
    """Scoring constants from normal images (paths or arrays); unreadable files are listed, not fatal.

    Pixel statistics use a fixed-size random sample of each map so that memory stays bounded
    for large calibration folders at full resolution.
    """
    for name, q in (("image_quantile", image_quantile), ("pixel_quantile", pixel_quantile)):
        if not 0.0 < q <= 1.0:
            raise ZsadEdgeError(f"{name} must be in (0, 1], got {q}")
    rng = np.random.default_rng(seed)
    text_scores, map_peaks, pixels, skipped = [], [], [], []
    for done, image in enumerate(tqdm(images, desc="calibrate", unit="img", disable=not progress)):
        if stop.requested:
            raise Stopped(stop, done, len(images), "nothing written, the thresholds in use are unchanged")
        try:
            loaded = check_image(read_image(image) if not isinstance(image, np.ndarray) else image)
        except ImageReadError as exc:
            skipped.append(str(exc))
            continue
        result = detector.score_batch([loaded])[0]
        text_scores.append(result.text_score)
        map_peaks.append(result.map_peak)
        flat = result.anomaly_map.ravel()
        if flat.size > PIXEL_SAMPLES_PER_IMAGE:
            flat = flat[rng.choice(flat.size, PIXEL_SAMPLES_PER_IMAGE, replace=False)]
        pixels.append(flat)
    if len(text_scores) < MIN_CALIBRATION_IMAGES:
        raise ZsadEdgeError(
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} readable normal images, "
            f"got {len(text_scores)}" + (f" ({'; '.join(skipped)})" if skipped else "")
        )
    ranges = calibrated_ranges(np.array(text_scores), np.array(map_peaks))
    scores = detector.score_rule.combine(np.array(text_scores), np.array(map_peaks), {**detector.scoring, **ranges})
    return {
        **ranges,
        "image_threshold": float(np.quantile(scores, image_quantile)),
        "map_threshold": float(np.quantile(np.concatenate(pixels), pixel_quantile)),
        "map_normal_median": float(np.median(np.concatenate(pixels))),  # the overlay's colour scale starts here
        "calibrated": True,
        "calibration": {
            "images": len(scores),
            "skipped": skipped,
            "image_quantile": image_quantile,
            "pixel_quantile": pixel_quantile,
        },
    }


def write_scoring(bundle_dir, scoring: dict) -> Manifest:
    """Merge `scoring` into the bundle's manifest on disk and replace manifest.json in one rename.

    Read from disk, not taken from a detector: a detector running a precision variant holds a
    manifest with the variant's components in place of the fp32 ones. Only the manifest changes
    (it is not itself hashed), so graph hashes stay valid.
    """
    manifest = load_manifest(bundle_dir, verify_hashes=False)
    manifest.scoring = {**manifest.scoring, **scoring}
    write_manifest(bundle_dir, manifest)
    return manifest


def calibrate_memory_bank(
    detector: DetectionPipeline,
    images: Sequence,
    image_quantile: float = 1.0,
    pixel_quantile: float = 0.999,
    progress: bool = True,
    stop: StopRequest = NEVER,
) -> dict:
    """Calibrate a few-shot detector; the constants belong to its memory bank (saved with it),
    and the detector uses them from now on."""
    scoring = calibrate_scores(detector, images, image_quantile, pixel_quantile, progress=progress, stop=stop)
    detector.memory_bank.scoring = scoring
    detector.attach_memory_bank(detector.memory_bank)
    return scoring
