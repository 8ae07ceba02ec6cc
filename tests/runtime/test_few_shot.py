"""APRIL-GAN few-shot: memory bank search, parity with the torch reference, persistence."""

import numpy as np
import pytest
from helpers import relative_map_error

from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import BundleError, ZsadEdgeError
from zsad_edge.runtime.interpolation import align_corners_matrix
from zsad_edge.runtime.stages.memory_bank import MemoryBank


def _parts(rng, count, shape=(90, 140)):
    return [np.clip(0.5 + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32) for _ in range(count)]


def test_bank_distances_match_brute_force(rng):
    bank_taps = rng.standard_normal((3, 2, 5, 8)).astype(np.float32)  # k=3 shots, 2 taps, 5 patches
    queries = rng.standard_normal((2, 2, 5, 8)).astype(np.float32)
    bank = MemoryBank.from_taps(bank_taps, "x")
    expected = np.zeros((2, 5))
    for b in range(2):
        for tap in range(2):
            for n in range(5):
                q = queries[b, tap, n] / np.linalg.norm(queries[b, tap, n])
                sims = [q @ (t / np.linalg.norm(t)) for t in bank_taps[:, tap].reshape(-1, 8)]
                expected[b, n] += 1 - max(sims)
    np.testing.assert_allclose(bank.distances(queries), expected, atol=1e-5)
    np.testing.assert_allclose(bank.distances(bank_taps)[0], 0.0, atol=1e-5)  # a shot is its own neighbour


def test_align_corners_matrix_endpoints_and_midpoints():
    matrix = align_corners_matrix(3, 5)
    np.testing.assert_allclose(matrix @ np.array([0.0, 1.0, 4.0]), [0.0, 0.5, 1.0, 2.5, 4.0], atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_runtime_few_shot_matches_reference(tiny_built, rng, batch):
    normals = _parts(rng, 4)
    queries = _parts(rng, batch, (120, 80))
    runtime = Detector.from_bundle(tiny_built.path)
    reference = tiny_built.reference_detector()
    runtime.fit_normal(normals)
    reference.fit_normal(normals)
    for got, want in zip(runtime.detect_batch(queries), reference.detect_batch(queries)):
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4
        assert abs(got.score - want.score) <= 1e-5
    reference.detach_memory_bank()  # the few-shot term really changes the map
    plain = reference.detect_batch(queries)[0]
    assert np.abs(plain.anomaly_map - runtime.detect_batch(queries)[0].anomaly_map).max() > 0.1


def test_reference_searches_a_runtime_bank(tiny_built, rng, tmp_path):
    runtime = Detector.from_bundle(tiny_built.path)
    runtime.fit_normal(_parts(rng, 3)).save(tmp_path / "bank.npz")
    reference = tiny_built.reference_detector()
    reference.load_memory_bank(tmp_path / "bank.npz")
    query = _parts(rng, 1)[0]
    got, want = runtime(query), reference(query)
    assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4 and abs(got.score - want.score) <= 1e-5


def test_bank_saves_loads_and_refuses_other_encoders(tiny_built, rng, tmp_path):
    runtime = Detector.from_bundle(tiny_built.path)
    bank = runtime.fit_normal(_parts(rng, 2))
    query = _parts(rng, 1)[0]
    before = runtime(query)
    bank.save(tmp_path / "bank.npz")
    fresh = Detector.from_bundle(tiny_built.path)
    fresh.load_memory_bank(tmp_path / "bank.npz")
    assert fresh.memory_bank.shots == 2
    np.testing.assert_array_equal(fresh(query).anomaly_map, before.anomaly_map)
    MemoryBank(bank.tokens, 2, "0" * 64).save(tmp_path / "other.npz")
    with pytest.raises(BundleError, match="built with another image encoder"):
        fresh.load_memory_bank(tmp_path / "other.npz")
    with pytest.raises(BundleError, match="memory bank not found"):
        fresh.load_memory_bank(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(BundleError, match="unreadable"):
        fresh.load_memory_bank(tmp_path / "junk.npz")


def test_a_folder_path_fits_on_every_image_in_it_as_a_list_of_them_does(tiny_built, normal_folder, tmp_path):
    from zsad_edge.runtime.image_io import list_images

    from_folder = Detector.from_bundle(tiny_built.path).fit_normal(str(normal_folder))
    from_list = Detector.from_bundle(tiny_built.path).fit_normal(list_images([normal_folder]))
    assert from_folder.shots == from_list.shots == 6
    np.testing.assert_array_equal(from_folder.tokens, from_list.tokens)
    with pytest.raises(ZsadEdgeError, match="image not found: .*absent"):
        Detector.from_bundle(tiny_built.path).fit_normal(normal_folder / "absent")
    with pytest.raises(ZsadEdgeError, match="no image found in the folder given"):
        Detector.from_bundle(tiny_built.path).fit_normal(tmp_path)
