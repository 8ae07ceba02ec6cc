"""Score calibration from normal images: constants, thresholds, manifest rewrite, errors."""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from zsad_edge.calibration.scores import calibrate_scores, write_scoring
from zsad_edge.runtime.bundle import load_manifest
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import ZsadEdgeError


@pytest.fixture
def normal_images(rng):
    return [np.clip(0.5 + 0.05 * rng.standard_normal((60, 90)), 0, 1).astype(np.float32) for _ in range(5)]


def test_constants_follow_the_normal_statistics(tiny_detector, normal_images):
    scoring = calibrate_scores(tiny_detector, normal_images, progress=False)
    results = [tiny_detector(im) for im in normal_images]
    scores = [r.score for r in results]
    assert scoring["image_threshold"] == pytest.approx(max(scores), abs=1e-7)
    assert scoring["text_score_range"] == pytest.approx(
        [min(scores), max(scores)], abs=1e-7
    )  # APRIL-GAN: score = prompt
    assert scoring["map_max_range"][1] == pytest.approx(max(r.map_peak for r in results), abs=1e-6)
    all_pixels = np.concatenate([r.anomaly_map.ravel() for r in results])  # small maps: every pixel is used
    assert scoring["map_threshold"] == pytest.approx(np.quantile(all_pixels, 0.999), abs=1e-6)
    assert scoring["calibrated"] is True and scoring["calibration"]["images"] == 5


def test_calibrated_bundle_flags_no_calibration_image_and_stays_verifiable(tiny_built, normal_images, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_built.path, bundle)
    detector = Detector.from_bundle(bundle)
    write_scoring(bundle, calibrate_scores(detector, normal_images, progress=False))
    reloaded = Detector.from_bundle(bundle)  # hashes still verify
    assert load_manifest(bundle).scoring["calibrated"] is True
    assert not any(reloaded(im).is_anomalous for im in normal_images)
    assert reloaded.image_threshold == pytest.approx(max(detector(im).score for im in normal_images))


def test_too_few_readable_images_is_an_error_naming_them(tiny_detector, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(ZsadEdgeError, match="at least 2 readable normal images, got 1.*cannot decode"):
        calibrate_scores(tiny_detector, [np.zeros((20, 20), np.uint8), tmp_path / "bad.png"], progress=False)
    with pytest.raises(ZsadEdgeError, match="image_quantile must be in"):
        calibrate_scores(tiny_detector, [], image_quantile=0.0)


def test_calibrate_cli_on_battery_weld_train_good(tiny_built, battery_weld, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_built.path, bundle)
    proc = subprocess.run(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "calibrate", str(bundle), str(battery_weld / "train" / "good")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "calibrated on 37 normal image(s)" in proc.stdout
    assert load_manifest(bundle).scoring["calibration"]["images"] == 37
