"""The PyTorch reference detector: the whole pipeline in torch, with the runtime's result type.

It shares the runtime's preprocessing (so both sides see the same input tensor) and resizes maps
with torch's own interpolate, so parity tests compare the exported graphs and the runtime's
postprocessing against an independent implementation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zsad_edge.runtime.bundle import Manifest
from zsad_edge.runtime.pipeline import DetectionPipeline


class ReferenceDetector(DetectionPipeline):
    """Mirrors runtime.Detector stage by stage with torch modules (eager fp32 by default)."""

    def __init__(self, manifest: Manifest, encoder: nn.Module, heads_module: nn.Module,
                 device: str = "cpu") -> None:
        super().__init__(manifest)
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        self.heads_module = heads_module.eval().to(self.device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def encode(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(torch.from_numpy(batch).to(self.device))

    @torch.no_grad()
    def heads(self, features: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, image_score = self.heads_module(*features)
        return anomaly_map.cpu().numpy(), image_score.cpu().numpy()

    @torch.no_grad()
    def resize_maps(self, maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        return [
            F.interpolate(torch.from_numpy(m)[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
            for m, size in zip(maps, sizes)
        ]
