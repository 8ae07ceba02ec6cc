"""Turning images into the CLIP input tensor, driven by the bundle's recorded preprocessing.

The same function feeds the PyTorch reference and the exported graphs, so parity tests measure
the graphs and not two resize implementations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np

from .errors import BundleError

_INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
RESIZE_RULES = ("stretch",)


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
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_RULES:
            raise BundleError(f"unsupported resize rule {self.resize!r}; this runtime knows {RESIZE_RULES}")
        if self.interpolation not in _INTERPOLATIONS:
            raise BundleError(f"unsupported interpolation {self.interpolation!r}; known: {sorted(_INTERPOLATIONS)}")

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(
            input_size=tuple(data["input_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            resize=data.get("resize", "stretch"),
            interpolation=data.get("interpolation", "bicubic"),
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data


def preprocess_batch(images_rgb: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Float32 RGB images in [0, 1] of any sizes -> normalised NCHW float32 batch."""
    height, width = spec.input_size
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    batch = np.empty((len(images_rgb), 3, height, width), dtype=np.float32)
    for index, image in enumerate(images_rgb):
        resized = cv2.resize(image, (width, height), interpolation=_INTERPOLATIONS[spec.interpolation])
        resized = np.clip(resized, 0.0, 1.0)
        batch[index] = ((resized - mean) / std).transpose(2, 0, 1)
    return batch
