"""Reading images from disk and normalising their layout, with errors that name the file.

Camera stations produce 8-bit and 16-bit grayscale, RGB and RGBA images of any size; everything is
turned into float32 RGB in [0, 1] here so the rest of the pipeline sees one layout.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from .errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an RGB(A) or grayscale array, keeping its bit depth.

    np.fromfile + imdecode instead of cv2.imread: imread returns None silently for both a missing
    file and a corrupt one, and fails on some non-ASCII paths.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"image file is empty: {path}")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageReadError(f"cannot decode image (corrupt or not an image): {path}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an image array's layout and return it in its own dtype (HxWx1 squeezed to HxW).

    Accepted: HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) of uint8, uint16 or float. The pixel values
    are not converted here: the preprocessing rule decides how (8-bit images take the exact
    Pillow path the official pipelines use, other depths a float path).
    """
    if not isinstance(image, np.ndarray):
        raise ImageReadError(f"expected a numpy image array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageReadError(f"unsupported image shape {image.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ImageReadError(f"image too small: {image.shape[1]}x{image.shape[0]} pixels")
    if image.dtype not in (np.uint8, np.uint16) and not np.issubdtype(image.dtype, np.floating):
        raise ImageReadError(f"unsupported image dtype {image.dtype}: expected uint8, uint16 or float")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ImageReadError("image contains NaN or infinite values")
    return image


def to_rgb_float(image: np.ndarray) -> np.ndarray:
    """Convert HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) of uint8/uint16/float to float32 RGB in [0, 1].

    Alpha is dropped rather than composited: inspection images with alpha are screenshots or
    exports, where the colour channels already hold the part.
    """
    image = check_image(image)
    if image.dtype == np.uint8:
        scaled = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        scaled = image.astype(np.float32) / 65535.0
    else:
        scaled = np.clip(image.astype(np.float32), 0.0, 1.0)
    if scaled.ndim == 2:
        return np.repeat(scaled[:, :, None], 3, axis=2)
    return np.ascontiguousarray(scaled[:, :, :3])


def list_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into image paths; folders are walked recursively in sorted order.

    Files named explicitly are kept whatever their suffix, so a corrupt or mislabelled file is
    reported by the reader instead of being skipped silently.
    """
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths.extend(sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(item)
    return paths


def write_image_atomic(path: str | os.PathLike, image_rgb: np.ndarray) -> None:
    """Encode an RGB (or single-channel) uint8 image and move it into place in one rename,
    so an interrupted run never leaves a truncated PNG behind."""
    path = Path(path)
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR) if image_rgb.ndim == 3 else image_rgb
    ok, encoded = cv2.imencode(path.suffix or ".png", bgr)
    if not ok:
        raise ImageReadError(f"cannot encode image for {path}")
    write_bytes_atomic(path, encoded.tobytes())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file through a temporary sibling and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
