"""Runtime (onnxruntime) vs PyTorch reference: maps within 1e-4 of their range, scores within 1e-5."""

import numpy as np
import pytest
from helpers import relative_map_error

from zsad_edge.runtime.image_io import list_images, read_image

MAP_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-5


def _mixed_images(rng):
    """Different sizes, aspect ratios, channel layouts and bit depths in one batch."""
    return [
        (rng.random((256, 400)) * 255).astype(np.uint8),
        (rng.random((300, 180, 3)) * 255).astype(np.uint8),
        (rng.random((97, 131, 4)) * 65535).astype(np.uint16),
    ]


def _assert_parity(runtime_results, reference_results):
    for got, want in zip(runtime_results, reference_results, strict=True):
        assert got.anomaly_map.shape == want.anomaly_map.shape
        assert got.anomaly_map.dtype == np.float32
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= MAP_TOLERANCE
        assert abs(got.score - want.score) <= SCORE_TOLERANCE
        assert np.mean(got.mask != want.mask) < 1e-3  # only pixels sitting on the threshold may differ


@pytest.mark.parametrize("batch", [1, 3])
def test_runtime_matches_reference(tiny_built, tiny_detector, rng, batch):
    images = _mixed_images(rng)[:batch]
    reference = tiny_built.reference_detector()
    runtime_results = tiny_detector.detect_batch(images)
    _assert_parity(runtime_results, reference.detect_batch(images))
    assert [r.anomaly_map.shape for r in runtime_results] == [im.shape[:2] for im in images]


def test_batched_equals_one_by_one(tiny_detector, rng):
    images = _mixed_images(rng) + [np.full((64, 64), 0.3, np.float32)]  # batch 4
    batched = tiny_detector.detect_batch(images)
    for image, result in zip(images, batched):
        single = tiny_detector(image)
        assert relative_map_error(result.anomaly_map, single.anomaly_map) <= MAP_TOLERANCE
        assert abs(result.score - single.score) <= SCORE_TOLERANCE


def test_parity_on_battery_weld_images(tiny_built, tiny_detector, battery_weld):
    paths = list_images([battery_weld / "test" / "defective"])[:4] + list_images([battery_weld / "test" / "good"])[:2]
    images = [read_image(p) for p in paths]
    assert images[0].ndim == 2  # the set is 8-bit grayscale, 400x256: exercised as is
    reference = tiny_built.reference_detector()
    _assert_parity(tiny_detector.detect_batch(images), reference.detect_batch(images))
    _assert_parity([tiny_detector(str(paths[0]))], [reference(images[0])])


def test_export_time_parity_is_recorded(tiny_built):
    parity = tiny_built.manifest.parity
    assert set(parity) == {"image_encoder", "heads"}
    for component in parity.values():
        assert component["batch_sizes"] == [1, 4]
        assert max(component["relative_error"].values()) <= MAP_TOLERANCE


def test_result_fields(tiny_detector, tiny_built):
    result = tiny_detector(np.zeros((40, 60, 3), np.float32))
    n_taps = len(tiny_built.manifest.taps)
    assert 0.0 <= result.score <= 1.0
    assert result.mask.dtype == bool and result.mask.shape == (40, 60)
    assert 0.0 <= result.anomaly_map.min() and result.anomaly_map.max() <= n_taps
    assert np.array_equal(result.mask, result.anomaly_map > tiny_built.manifest.scoring["map_threshold"])
    assert set(result.summary()) >= {"score", "is_anomalous", "map_max", "mask_fraction"}


@pytest.mark.slow
def test_vit_b16_parity_at_224(tmp_path, rng):
    """The architecture-exact ViT-B-16 (random weights): export gate and runtime parity."""
    from zsad_edge.export.build import BuildConfig, build_bundle
    from zsad_edge.export.models.clip import ClipSpec
    from zsad_edge.runtime.detector import Detector

    built = build_bundle(
        BuildConfig(
            clip=ClipSpec("ViT-B-16", random_init=True, image_size=224), out_dir=tmp_path / "vitb16", random_heads=True
        )
    )
    assert built.manifest.patch_grid == [14, 14] and built.manifest.taps == [3, 6, 9, 12]
    images = _mixed_images(rng)
    _assert_parity(
        Detector.from_bundle(built.path, backend="cpu").detect_batch(images),
        built.reference_detector().detect_batch(images),
    )


@pytest.mark.slow
def test_vit_b16_plus_240_sdpplus_parity(tmp_path, rng):
    """CLIP-AD's architecture (ViT-B-16-plus-240, 15 x 15 grid, width 896) with random weights, SDP+."""
    from zsad_edge.export.build import BuildConfig, build_bundle
    from zsad_edge.export.models.clip import ClipSpec
    from zsad_edge.runtime.detector import Detector

    built = build_bundle(
        BuildConfig(
            clip=ClipSpec("ViT-B-16-plus-240", random_init=True),
            method="sdpplus",
            out_dir=tmp_path / "sdpplus",
            random_heads=True,
        )
    )
    assert built.manifest.patch_grid == [15, 15] and tuple(built.manifest.preprocess.input_size) == (240, 240)
    assert built.manifest.clip["width"] == 896 and built.manifest.clip["embed_dim"] == 640
    images = _mixed_images(rng)
    _assert_parity(
        Detector.from_bundle(built.path, backend="cpu").detect_batch(images),
        built.reference_detector().detect_batch(images),
    )
