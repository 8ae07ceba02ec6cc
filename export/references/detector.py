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
from scipy.ndimage import gaussian_filter
from torch import nn

from zsad_edge.runtime.bundle import Manifest
from zsad_edge.runtime.contract import FNN_FUSION, METHODS
from zsad_edge.runtime.pipeline import DetectionPipeline
from zsad_edge.runtime.stages.few_shot import FewShot
from zsad_edge.runtime.stages.fnn_fusion import FnnFusion
from zsad_edge.runtime.stages.memory_bank import MemoryBank


class ReferenceDetector(DetectionPipeline, FewShot):
    """Mirrors runtime.Detector stage by stage with torch modules (eager fp32 by default)."""

    def __init__(
        self,
        manifest: Manifest,
        encoder: nn.Module,
        heads_module: nn.Module,
        fnn_module: nn.Module | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(manifest)
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        self.heads_module = heads_module.eval().to(self.device)
        self.fnn_module = fnn_module.eval().to(self.device) if fnn_module is not None else None
        self._bank_tokens: torch.Tensor | None = None
        if FNN_FUSION in METHODS[manifest.method["name"]].post_stages:
            self.map_stages.append(FnnFusion(self._run_fnn, float(manifest.method["params"]["fusion_weight"])))

    def attach_memory_bank(self, bank: MemoryBank) -> None:
        """Also keep the bank's tokens on the device once, not copied again on every frame."""
        super().attach_memory_bank(bank)
        self._bank_tokens = torch.from_numpy(bank.tokens).to(self.device)

    def taps_as_numpy(self, features: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        return features[1].cpu().numpy()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def encode(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(torch.from_numpy(batch).to(self.device))

    @torch.no_grad()
    def heads(self, features: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, text_score = self.heads_module(*features)
        return anomaly_map.cpu().numpy(), text_score.cpu().numpy()

    @torch.no_grad()
    def _run_fnn(self, features: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
        anomaly_map, score = self.fnn_module(*features)
        return anomaly_map.cpu().numpy(), score.cpu().numpy()

    def smooth(self, maps: np.ndarray) -> np.ndarray:
        """scipy's gaussian_filter per map (reflect border, truncate 4 sigma), as CLIP-AD's code uses."""
        return np.stack([gaussian_filter(m, sigma=self.gaussian_sigma) for m in maps])

    @torch.no_grad()
    def few_shot_map(self, features: tuple[torch.Tensor, torch.Tensor]) -> np.ndarray:
        """Per tap: 1 - max cosine to the bank, as a grid, upsampled (align_corners=True), summed."""
        queries = F.normalize(features[1], dim=-1)
        bank = self._bank_tokens
        grid = self.manifest.patch_grid
        total = 0
        for tap in range(queries.shape[1]):
            distance = 1 - (queries[:, tap] @ bank[tap].T).amax(dim=-1)
            distance = distance.reshape(-1, 1, *grid)
            total = (
                total
                + F.interpolate(
                    distance, size=tuple(self.manifest.preprocess.input_size), mode="bilinear", align_corners=True
                )[:, 0]
            )
        return total.cpu().numpy()

    @torch.no_grad()
    def resize_maps(self, maps: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        return [
            F.interpolate(torch.from_numpy(m)[None, None], size=size, mode="bilinear", align_corners=False)[
                0, 0
            ].numpy()
            for m, size in zip(maps, sizes)
        ]
