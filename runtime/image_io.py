"""Reading images from disk and normalising their layout, with errors that name the file.

Camera stations produce 8-bit and 16-bit grayscale, RGB and RGBA images of any size, and float
arrays from other software. Files are decoded keeping their depth; `to_rgb_float` turns any of
them into float32 RGB in [0, 1] where one layout is needed.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from .errors import ImageReadError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
# Full scales a float image may be given in, tried in order: 0-1, then 8-bit and 16-bit values.
FLOAT_SCALES = (1.0, 255.0, 65535.0)
# 8-bit files this many times larger than the model input (per side) are decoded at 1/2, 1/4 or
# 1/8 by the codec (OpenCV's reduced decode): a 48-megapixel JPEG never sits in memory in full.
REDUCED_DECODE_FACTORS = (8, 4, 2)
_STDERR_LOCK = threading.Lock()
_warned_scales: set[float] = set()
LOG = logging.getLogger(__name__)


def read_image(path: str | os.PathLike, keep_side: int | None = None) -> np.ndarray:
    """Decode an image file to an RGB(A) or grayscale array, keeping its bit depth.

    keep_side: when given, an 8-bit grayscale or RGB file whose shorter side is at least twice
    this is decoded reduced (by 2, 4 or 8), keeping the shorter side >= keep_side.
    np.fromfile + imdecode instead of cv2.imread: imread returns None silently for both a missing
    file and a corrupt one, and fails on some non-ASCII paths. What the codecs print to stderr
    (libpng's "IDAT: incorrect data check") goes into our one error line instead.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    return decode_image(np.fromfile(path, dtype=np.uint8), str(path), keep_side)


def decode_image(data: np.ndarray | bytes, name: str, keep_side: int | None = None) -> np.ndarray:
    """Decode an encoded image (a file's bytes) the way `read_image` does; `name` is what errors call it."""
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if data.size == 0:
        raise ImageReadError(f"image file is empty: {name}")
    with _codec_messages() as messages:
        image = cv2.imdecode(data, _decode_flag(data, keep_side))
    if image is None:
        detail = f": {messages[0]}" if messages and messages[0] else ""
        raise ImageReadError(f"cannot decode image (corrupt or not an image{detail}): {name}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def _decode_flag(data: np.ndarray, keep_side: int | None) -> int:
    """IMREAD_UNCHANGED, or a reduced 8-bit decode for files far larger than needed."""
    if keep_side is None:
        return cv2.IMREAD_UNCHANGED
    from PIL import Image  # reads only the header here

    try:
        with Image.open(io.BytesIO(data.tobytes())) as header:
            mode, shorter = header.mode, min(header.size)
    except Exception:  # not something Pillow knows: let OpenCV decode (or refuse) it as usual
        return cv2.IMREAD_UNCHANGED
    reduced = {
        "L": (cv2.IMREAD_REDUCED_GRAYSCALE_2, cv2.IMREAD_REDUCED_GRAYSCALE_4, cv2.IMREAD_REDUCED_GRAYSCALE_8),
        "RGB": (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_COLOR_8),
    }.get(mode)
    if reduced is None:
        return cv2.IMREAD_UNCHANGED
    for factor, flag in zip(REDUCED_DECODE_FACTORS, reduced[::-1]):
        if shorter // factor >= keep_side:
            return flag
    return cv2.IMREAD_UNCHANGED


@contextmanager
def _codec_messages() -> Iterator[list[str]]:
    """Capture what native codecs write to file descriptor 2 while decoding, as a list of one text.

    libpng and OpenCV print straight to the descriptor, past Python's sys.stderr; the lock keeps
    two decoding threads from swapping each other's descriptors.
    """
    messages: list[str] = []
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        yield messages
        return
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(fd)
        os.dup2(sink.fileno(), fd)
        try:
            yield messages
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            messages.append(" ".join(sink.read().decode("utf-8", "replace").split())[:200])


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
        scaled = np.clip(image.astype(np.float32) / float_scale(image), 0.0, 1.0)
    if scaled.ndim == 2:
        return np.repeat(scaled[:, :, None], 3, axis=2)
    return np.ascontiguousarray(scaled[:, :, :3])


def float_scale(image: np.ndarray) -> float:
    """The full scale of a float image: 1.0, or 255 / 65535 for values that only fit those.

    Float images are expected in [0, 1]; a float TIFF holding 0-255 values would otherwise be
    clipped to white. Values up to 1.001 count as [0, 1] (rounding). Negative values, or values
    above 65535, have no sensible reading and are refused. A rescale is logged once per scale.
    """
    low, high = float(image.min()), float(image.max())
    if low < 0:
        raise ImageReadError(f"float image has negative values (down to {low:.4g}): expected 0-1, 0-255 or 0-65535")
    for scale in FLOAT_SCALES:
        if high <= scale * 1.001:
            if scale != 1.0 and scale not in _warned_scales:
                _warned_scales.add(scale)
                LOG.warning("float image values reach %.4g: read as 0-%g (float images should be 0-1)", high, scale)
            return scale
    raise ImageReadError(f"float image values reach {high:.4g}: expected 0-1, 0-255 or 0-65535")


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
    write_bytes_atomic(path, encode_image(image_rgb, path.suffix or ".png"))


def encode_image(image_rgb: np.ndarray, suffix: str = ".png") -> bytes:
    """An RGB (or single-channel) uint8 image as the bytes of a file of that suffix."""
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR) if image_rgb.ndim == 3 else image_rgb
    ok, encoded = cv2.imencode(suffix, bgr)
    if not ok:
        raise ImageReadError(f"cannot encode an image as {suffix}")
    return encoded.tobytes()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file through a temporary sibling and os.replace.

    mkstemp creates the file 0600; it gets the mode a plain open() would have given it, so a
    station service running as another user can read bundles, banks and results.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        apply_umask(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def process_umask() -> int:
    """The process umask; read from /proc where possible, since os.umask can only read it by setting it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give a file or folder made by tempfile (0600 / 0700) the mode open() / mkdir() would give it."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~process_umask())
