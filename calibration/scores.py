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

from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from zsad_edge.runtime.archive.ray_data import RayOptions, ray_outcomes
from zsad_edge.runtime.archive.rows import Outcome, Row, rows_of, score_rows
from zsad_edge.runtime.bundle import Manifest, load_manifest, write_manifest
from zsad_edge.runtime.detector import DetectorSpec
from zsad_edge.runtime.errors import ImageReadError, ZsadEdgeError
from zsad_edge.runtime.image_io import check_image
from zsad_edge.runtime.pipeline import DetectionPipeline
from zsad_edge.runtime.scoring import calibrated_ranges
from zsad_edge.runtime.stopping import NEVER, Stopped, StopRequest

MIN_CALIBRATION_IMAGES = 2
PIXEL_SAMPLES_PER_IMAGE = 20_000


def calibration_sample(detector, images: list[np.ndarray], rows: list[Row], seed: int) -> list[tuple]:
    """What calibration keeps of each normal image: its prompt score, map peak and a random sample
    of its map's pixels, drawn from (seed, the image's position), so wherever an image is scored
    (here, or a Ray actor with --ray) it gives the same numbers. The archive `work` of calibrate."""
    samples = []
    for result, row in zip(detector.score_batch(images), rows):
        flat = result.anomaly_map.ravel()
        if flat.size > PIXEL_SAMPLES_PER_IMAGE:
            rng = np.random.default_rng([seed, row["index"]])
            flat = flat[rng.choice(flat.size, PIXEL_SAMPLES_PER_IMAGE, replace=False)]
        samples.append((result.text_score, result.map_peak, flat))
    return samples


def calibrate_scores(
    detector: DetectionPipeline,
    images: Sequence,
    image_quantile: float = 1.0,
    pixel_quantile: float = 0.999,
    seed: int = 0,
    progress: bool = True,
    stop: StopRequest = NEVER,
    ray: tuple[DetectorSpec, RayOptions] | None = None,
) -> dict:
    """Scoring constants from normal images (paths or arrays); unreadable files are listed, not fatal.

    Pixel statistics use a fixed-size random sample of each map so that memory stays bounded
    for large calibration folders at full resolution. Files are decoded as the detector decodes
    them when it scores (reduced where far larger than its input). With `ray` (paths only), the
    images are scored on a Ray actor pool; the constants are the same.
    """
    for name, q in (("image_quantile", image_quantile), ("pixel_quantile", pixel_quantile)):
        if not 0.0 < q <= 1.0:
            raise ZsadEdgeError(f"{name} must be in (0, 1], got {q}")
    text_scores, map_peaks, pixels, skipped = [], [], [], []
    bar = tqdm(total=len(images), desc="calibrate", unit="img", disable=not progress)
    with bar:
        for _, scored, value in _calibration_outcomes(detector, images, seed, stop, ray):
            if scored:
                text_scores.append(value[0])
                map_peaks.append(value[1])
                pixels.append(value[2])
            else:
                skipped.append(value)
            bar.update()
    done = len(text_scores) + len(skipped)
    if stop.requested and done < len(images):
        raise Stopped(stop, done, len(images), "nothing written, the thresholds in use are unchanged")
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
    ray: tuple[DetectorSpec, RayOptions] | None = None,
) -> dict:
    """Calibrate a few-shot detector; the constants belong to its memory bank (saved with it),
    and the detector uses them from now on."""
    scoring = calibrate_scores(detector, images, image_quantile, pixel_quantile, progress=progress, stop=stop, ray=ray)
    detector.memory_bank.scoring = scoring
    detector.attach_memory_bank(detector.memory_bank)
    return scoring


def _calibration_outcomes(detector, images: Sequence, seed: int, stop: StopRequest, ray) -> Iterator[Outcome]:
    """Each image's calibration sample (or why it was skipped): arrays and files scored here one at a
    time, or files on a Ray actor pool."""
    if ray is not None:
        yield from ray_outcomes(rows_of(images), ray[0], calibration_sample, seed, ray[1], stop)
        return
    for index, image in enumerate(images):
        if stop.requested:
            return
        row = {"index": index, "path": str(image) if not isinstance(image, np.ndarray) else "", "tag": ""}
        if isinstance(image, np.ndarray):
            try:
                checked = check_image(image)
            except ImageReadError as exc:
                yield row, False, str(exc)
                continue
            yield row, True, calibration_sample(detector, [checked], [row], seed)[0]
        else:
            yield from score_rows(detector, [row], calibration_sample, seed)
