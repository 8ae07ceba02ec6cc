"""SAM in the lean runtime: preprocessing, one encoder run per image, prompt decoding, mask postprocessing.

Mirrors segment_anything's SamPredictor without torch. The image is resized so its longer side is
the model's input size, normalised with the model's pixel constants and padded at the bottom and
right; prompt coordinates are scaled the same way. The decoder answers at low resolution
(4 x the embedding grid); masks are upsampled to the padded input, cropped to the resized image
and resized to the original size, all bilinear (half-pixel centres, as torch's interpolate).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..backends.components import GraphComponent
from ..contract import IMAGE, SAM_DECODER_INPUTS, SAM_DECODER_OUTPUTS, SAM_IMAGE_EMBEDDINGS
from ..errors import ZsadEdgeError

# Point labels understood by the decoder graph (segment_anything's prompt encoder conventions).
PAD, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


@dataclass(frozen=True)
class SamGeometry:
    """Input size and pixel normalisation of one SAM kind (from the manifest)."""

    input_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    embedding_grid: tuple[int, int]
    mask_threshold: float = 0.0

    @classmethod
    def from_params(cls, params: dict) -> "SamGeometry":
        return cls(
            int(params["input_size"]),
            tuple(params["pixel_mean"]),
            tuple(params["pixel_std"]),
            tuple(params["embedding_grid"]),
            float(params.get("mask_threshold", 0.0)),
        )

    @property
    def low_res_size(self) -> int:
        return 4 * self.embedding_grid[0]

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) after scaling the longer side to input_size, rounded as segment_anything does."""
        scale = self.input_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def to_model_coords(self, xy: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Pixel (x, y) of the original image -> pixel coordinates in the model input."""
        height, width = original_size
        new_h, new_w = self.resized_size(height, width)
        return np.asarray(xy, dtype=np.float32) * np.array([new_w / width, new_h / height], dtype=np.float32)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """RGB float [0, 1] H x W x 3 -> normalised, padded [1, 3, S, S] float32."""
        new_h, new_w = self.resized_size(*rgb.shape[:2])
        resized = cv2.resize((rgb * 255.0).astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        normalised = (resized - np.array(self.pixel_mean, np.float32)) / np.array(self.pixel_std, np.float32)
        padded = np.zeros((self.input_size, self.input_size, 3), np.float32)
        padded[:new_h, :new_w] = normalised
        return np.ascontiguousarray(padded.transpose(2, 0, 1)[None])

    def logits_to_original(self, low_res: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """Low-res mask logits [P, l, l] -> logits at the original image size [P, H, W]."""
        height, width = original_size
        new_h, new_w = self.resized_size(height, width)
        size = self.input_size
        out = np.empty((low_res.shape[0], height, width), np.float32)
        for index, logits in enumerate(low_res):
            padded = cv2.resize(logits, (size, size), interpolation=cv2.INTER_LINEAR)
            out[index] = cv2.resize(padded[:new_h, :new_w], (width, height), interpolation=cv2.INTER_LINEAR)
        return out


@dataclass
class SamImage:
    """One image as the decoder sees it: its embedding and its original size."""

    embedding: np.ndarray  # [1, 256, g, g]
    original_size: tuple[int, int]


class SamPredictor:
    """Runs a bundle's SAM encoder and decoder graphs with onnxruntime."""

    def __init__(self, encoder: GraphComponent, decoder: GraphComponent, geometry: SamGeometry) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.geometry = geometry

    def encode(self, rgb: np.ndarray) -> SamImage:
        """Run the image encoder once; every prompt on this image reuses the result."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise ZsadEdgeError(f"SAM needs an H x W x 3 RGB image, got shape {rgb.shape}")
        embedding = self.encoder.run({IMAGE: self.geometry.preprocess(rgb)})[SAM_IMAGE_EMBEDDINGS]
        return SamImage(embedding, rgb.shape[:2])

    def decode(
        self, image: SamImage, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Prompts [P, K, 2] (model pixels) with labels [P, K] -> (iou [P, 4], low-res logits [P, 4, l, l]).

        mask_input [P, l, l] (previous low-res logits) or None; mask 0 is the single-mask answer.
        """
        prompts = coords.shape[0]
        size = self.geometry.low_res_size
        has_mask = np.full(prompts, 0.0 if mask_input is None else 1.0, np.float32)
        masks = np.zeros((prompts, 1, size, size), np.float32) if mask_input is None else mask_input[:, None]
        feeds = (
            image.embedding,
            np.ascontiguousarray(coords, dtype=np.float32),
            np.ascontiguousarray(labels, dtype=np.float32),
            np.ascontiguousarray(masks, dtype=np.float32),
            has_mask,
        )
        out = self.decoder.run(dict(zip(SAM_DECODER_INPUTS, feeds)))
        return tuple(out[name] for name in SAM_DECODER_OUTPUTS)

    def predict_box(self, image: SamImage, box_xyxy: np.ndarray) -> tuple[np.ndarray, float]:
        """One box in original pixels -> (mask at original size, predicted IoU), SAM's single-mask answer."""
        corners = self.geometry.to_model_coords(np.asarray(box_xyxy, np.float32).reshape(2, 2), image.original_size)
        iou, low_res = self.decode(image, corners[None], np.array([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]], np.float32))
        logits = self.geometry.logits_to_original(low_res[:, 0], image.original_size)[0]
        return logits > self.geometry.mask_threshold, float(iou[0, 0])
