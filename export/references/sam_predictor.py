"""The PyTorch reference of the runtime's SamPredictor, through segment_anything's own module API.

It shares the runtime's preprocessing and coordinate transform (SamGeometry) so both sides see the
same input, then calls the image encoder, `prompt_encoder(points=..., boxes=..., masks=...)` and
the mask decoder as segment_anything's predictor does: padding points are left to the prompt
encoder (it adds one when no box is given), box corners go in as `boxes`. Comparing the runtime
with it tests the exported graphs' prompt encoding, not only their arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

from zsad_edge.runtime.sam.predictor import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PAD, SamGeometry, SamImage

from ..models.sam import LoadedSam


class ReferenceSamPredictor:
    """encode / decode with the same signatures as runtime.sam_predictor.SamPredictor."""

    def __init__(self, sam: LoadedSam, geometry: SamGeometry, device: str = "cpu") -> None:
        self.sam = sam
        self.geometry = geometry
        self.device = torch.device(device)
        for module in (sam.image_encoder, sam.prompt_encoder, sam.mask_decoder):
            module.eval().to(self.device)

    @torch.no_grad()
    def encode(self, rgb: np.ndarray) -> SamImage:
        image = torch.from_numpy(self.geometry.preprocess(rgb)).to(self.device)
        return SamImage(self.sam.image_encoder(image).cpu().numpy(), rgb.shape[:2])

    @torch.no_grad()
    def decode(
        self, image: SamImage, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        embedding = torch.from_numpy(image.embedding).to(self.device)
        ious, masks = [], []
        for index in range(coords.shape[0]):
            kinds = labels[index]
            is_corner = (kinds == BOX_TOP_LEFT) | (kinds == BOX_BOTTOM_RIGHT)
            is_point = ~is_corner & (kinds != PAD)
            points = None
            if is_point.any():
                points = (
                    torch.from_numpy(coords[index][is_point][None]).float().to(self.device),
                    torch.from_numpy(kinds[is_point][None]).float().to(self.device),
                )
            boxes = (
                torch.from_numpy(coords[index][is_corner].reshape(1, 4)).float().to(self.device)
                if is_corner.any()
                else None
            )
            dense_mask = (
                None if mask_input is None else torch.from_numpy(mask_input[index][None, None]).float().to(self.device)
            )
            sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=dense_mask)
            low_res, iou = self.sam.mask_decoder.predict_masks(
                image_embeddings=embedding,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )
            ious.append(iou.cpu().numpy())
            masks.append(low_res.cpu().numpy())
        return np.concatenate(ious), np.concatenate(masks)
