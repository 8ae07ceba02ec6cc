"""Image decoding and layout normalisation: every real-world layout, every bad input."""

import cv2
import numpy as np
import pytest

from zsad_edge.runtime.errors import ImageReadError
from zsad_edge.runtime.image_io import list_images, read_image, to_rgb_float, write_image_atomic
from zsad_edge.runtime.preprocess import PreprocessSpec, preprocess_batch


def test_grayscale_8bit_becomes_three_equal_channels(tmp_path):
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    rgb = to_rgb_float(read_image(tmp_path / "g.png"))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[..., 0], gray / 255.0, atol=1e-7)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_16bit_is_scaled_by_65535(tmp_path):
    deep = np.full((8, 12), 65535 // 2, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert read_image(tmp_path / "d.png").dtype == np.uint16
    np.testing.assert_allclose(to_rgb_float(read_image(tmp_path / "d.png")), 0.5, atol=1e-4)


def test_bgr_file_is_returned_as_rgb_and_alpha_dropped(tmp_path):
    bgra = np.zeros((6, 9, 4), np.uint8)
    bgra[..., 0] = 255  # blue in OpenCV's order
    bgra[..., 3] = 10
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    rgb = to_rgb_float(read_image(tmp_path / "a.png"))
    assert rgb.shape == (6, 9, 3)
    assert rgb[0, 0].tolist() == [0.0, 0.0, 1.0]


def test_float_and_single_channel_arrays_are_accepted():
    assert to_rgb_float(np.full((5, 7, 1), 1.0005)).max() == 1.0  # rounding above 1: clipped, still 0-1
    assert to_rgb_float(np.zeros((5, 7), np.float64)).shape == (5, 7, 3)


def test_float_images_beyond_one_are_read_by_their_range(caplog, monkeypatch):
    """A float TIFF holding 0-255 values is not clipped to white: its range says how to read it."""
    monkeypatch.setattr("zsad_edge.runtime.image_io._warned_scales", set())  # the warning comes once per process
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.float32), (10, 1))
    with caplog.at_level("WARNING"):
        np.testing.assert_allclose(to_rgb_float(ramp)[..., 0], ramp / 255, atol=1e-6)
    assert "read as 0-255" in caplog.text
    np.testing.assert_allclose(to_rgb_float(np.full((4, 4), 30000.0))[0, 0], 30000 / 65535, rtol=1e-6)
    with pytest.raises(ImageReadError, match="negative values"):
        to_rgb_float(np.full((4, 4), -0.5))
    with pytest.raises(ImageReadError, match="expected 0-1, 0-255 or 0-65535"):
        to_rgb_float(np.full((4, 4), 1e6))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4, 2), np.uint8), "unsupported image shape"),
        (np.zeros((4, 4), np.int32), "unsupported image dtype"),
        (np.zeros((1, 9), np.uint8), "image too small"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays_are_named(array, message):
    with pytest.raises(ImageReadError, match=message):
        to_rgb_float(array)


def test_missing_empty_and_corrupt_files_are_named(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(tmp_path / "corrupt.png")


def test_list_images_walks_folders_sorted_and_keeps_explicit_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a+-.png", "sub/c.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    found = list_images([tmp_path, tmp_path / "notes.txt"])
    assert [p.name for p in found] == ["a+-.png", "b.png", "c.jpg", "notes.txt"]


def test_atomic_png_write_round_trips(tmp_path):
    image = (np.random.default_rng(0).random((10, 20, 3)) * 255).astype(np.uint8)
    write_image_atomic(tmp_path / "o.png", image)
    assert np.array_equal(read_image(tmp_path / "o.png"), image)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_preprocess_normalises_and_resizes_any_aspect():
    spec = PreprocessSpec((32, 32), (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    batch = preprocess_batch([np.full((10, 50, 3), 0.75, np.float32), np.zeros((40, 8, 3), np.float32)], spec)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, :, 5, 5], [(0.75 - 0.5) / 0.5, (0.75 - 0.25) / 0.25, 0.75], atol=1e-6)
    np.testing.assert_allclose(batch[1, 0], -1.0)
