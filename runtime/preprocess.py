"""Turning images into the CLIP input tensor, driven by the bundle's recorded preprocessing.

The same function feeds the PyTorch reference and the exported graphs, so parity tests measure
the graphs and not two resize implementations.

Resize rules (`PreprocessSpec.interpolation`):
- "pil_bicubic" / "pil_bilinear": what the official APRIL-GAN and CLIP-AD pipelines compute,
  torchvision's `Resize((S, S))` on the 8-bit PIL image: Pillow's kernel (bicubic a = -0.5),
  antialiased when shrinking, rounded to 8 bits after each pass, RGBA resized with premultiplied
  alpha, then converted to RGB. Pillow itself does the resize, so the input tensor is the
  official one, not an approximation. 16-bit and float images have no official counterpart:
  they are scaled to float [0, 1] (alpha dropped) and each channel is resized with the same
  Pillow kernel in float ("F" mode), without any 8-bit rounding.
- "bicubic" / "bilinear" / "area": OpenCV on float RGB (bicubic a = -0.75, no antialiasing), the
  rule of bundles built before the official one was adopted. Kept so those bundles run as built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from .errors import BundleError
from .image_io import check_image, to_rgb_float

_PIL_FILTERS = {"pil_bicubic": Image.Resampling.BICUBIC, "pil_bilinear": Image.Resampling.BILINEAR}
_OPENCV_INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
INTERPOLATIONS = (*_PIL_FILTERS, *_OPENCV_INTERPOLATIONS)
RESIZE_RULES = ("stretch",)
# A manifest without the field predates recorded kernels: those bundles were built with OpenCV.
LEGACY_INTERPOLATION = "bicubic"


@dataclass(frozen=True)
class PreprocessSpec:
    """How an image becomes the model input.

    resize "stretch" maps the whole image onto input_size without cropping (as APRIL-GAN does), so
    every pixel of a non-square part is inspected and the map maps back by a plain resize.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "stretch"
    interpolation: str = "pil_bicubic"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise BundleError(f"unsupported resize rule {self.resize!r}; this runtime knows {RESIZE_RULES}")
        if self.interpolation not in INTERPOLATIONS:
            raise BundleError(f"unsupported interpolation {self.interpolation!r}; known: {', '.join(INTERPOLATIONS)}")

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(
            input_size=tuple(data["input_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            resize=data.get("resize", "stretch"),
            interpolation=data.get("interpolation", LEGACY_INTERPOLATION),
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data


def official_interpolation(open_clip_name: str) -> str:
    """The rule for an open_clip preprocessing interpolation name ("bicubic" -> "pil_bicubic")."""
    rule = f"pil_{open_clip_name}"
    if rule not in _PIL_FILTERS:
        raise BundleError(
            f"no Pillow resize rule for interpolation {open_clip_name!r}; known: {', '.join(_PIL_FILTERS)}"
        )
    return rule


def resize_rgb(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """One image of any supported layout -> float32 RGB in [0, 1] at the model's input size."""
    height, width = spec.input_size
    image = check_image(image)
    if spec.interpolation in _OPENCV_INTERPOLATIONS:
        resized = cv2.resize(
            to_rgb_float(image), (width, height), interpolation=_OPENCV_INTERPOLATIONS[spec.interpolation]
        )
        return np.clip(resized, 0.0, 1.0)
    kernel = _PIL_FILTERS[spec.interpolation]
    if image.dtype == np.uint8:
        resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), kernel).convert("RGB")
        return np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    rgb = to_rgb_float(image)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, c])).resize((width, height), kernel))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0)


def preprocess_batch(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Images of any supported layouts and sizes -> normalised NCHW float32 batch."""
    height, width = spec.input_size
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    batch = np.empty((len(images), 3, height, width), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = ((resize_rgb(image, spec) - mean) / std).transpose(2, 0, 1)
    return batch
