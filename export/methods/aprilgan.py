"""APRIL-GAN zero-shot: linear heads on the raw taps, prompt-ensemble text vectors (few-shot is a bank)."""

from __future__ import annotations

import torch

from zsad_edge.runtime.contract import APRILGAN

from ..models.clip import ImageEncoderWithTaps, LoadedClip
from ..models.prompts import PromptSet, class_text_features
from . import register
from .base import ExportMethod, MethodModules


@register
class AprilGan(ExportMethod):
    spec = APRILGAN
    defaults = {
        "arch": "ViT-L-14-336",
        "pretrained": "openai",
        "image_size": 518,
        "prompt_set": "aprilgan",
        "gaussian_sigma": {"mvtec": 0.0, "visa": 0.0},
        "learning_rate": 1e-3,
        "epochs": 3,
    }

    def text_features(self, clip: LoadedClip, params: dict) -> torch.Tensor:
        return class_text_features(
            clip.model, clip.tokenizer, PromptSet.load(params["prompt_set"]), params["object_name"]
        )

    def assemble(self, clip: LoadedClip, taps: list[int], text: torch.Tensor, params: dict) -> MethodModules:
        heads = self.linear_heads(clip, taps, text)
        return MethodModules(
            ImageEncoderWithTaps(clip.model.visual, taps).eval(), heads, list(self.spec.encoder_outputs), heads
        )

    def default_scoring(self, num_taps: int, image_threshold: float | None) -> dict:
        """Each tap's abnormal probability is in [0, 1]: the map in [0, taps], threshold at its middle."""
        return {
            "rule": self.spec.score_rule,
            "map_threshold": 0.5 * num_taps,
            "map_max": float(num_taps),
            "image_threshold": 0.5 if image_threshold is None else image_threshold,
            "calibrated": False,
        }
