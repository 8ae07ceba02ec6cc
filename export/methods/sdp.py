"""CLIP-AD SDP, training-free: the staged dual-path surgery encoder, DBSCAN text vectors, feature surgery."""

from __future__ import annotations

import torch

from zsad_edge.runtime.contract import SDP
from zsad_edge.runtime.errors import ModelLoadError

from ..defaults import CLIPAD_MODES
from ..models.clip import LoadedClip
from ..models.prompts import PromptSet
from ..models.sdp import DBSCAN_SETTINGS, LEGACY_CLIPAD_MODE, SdpHeads, SurgeryEncoder, representative_text_features
from . import register
from .base import ExportMethod, MethodModules


def clipad_mode(params: dict) -> str:
    """A bundle's CLIP-AD mode; bundles from before it was recorded computed the clean one."""
    return params.get("clipad_mode", LEGACY_CLIPAD_MODE)


class ClipAdMethod(ExportMethod):
    """What every method on CLIP-AD's encoder shares: DBSCAN text vectors and the CLIP-AD mode."""

    options = ("clipad_mode",)
    uses_dataset_family = True
    # CLIP-AD's model, size, prompts and smoothing (sigma 8 in its scripts, SDP+ on VisA aside).
    model_defaults = {
        "arch": "ViT-B-16-plus-240",
        "pretrained": "laion400m_e31",
        "image_size": 240,
        "prompt_set": "clipad",
        "gaussian_sigma": {"mvtec": 8.0, "visa": 8.0},
    }

    def params(self, object_name, prompt_set, gaussian_sigma, dataset, **options) -> dict:
        params = super().params(object_name, prompt_set, gaussian_sigma, dataset, **options)
        eps, min_samples = DBSCAN_SETTINGS[dataset]
        mode = options.get("clipad_mode") or self.defaults["clipad_mode"]
        if mode not in CLIPAD_MODES:
            raise ModelLoadError(f"unknown CLIP-AD mode {mode!r}; choose one of {', '.join(CLIPAD_MODES)}")
        return {**params, "dbscan": {"setting": dataset, "eps": eps, "min_samples": min_samples}, "clipad_mode": mode}

    def text_features(self, clip: LoadedClip, params: dict) -> torch.Tensor:
        return representative_text_features(
            clip.model,
            clip.tokenizer,
            PromptSet.load(params["prompt_set"]),
            params["object_name"],
            params["dbscan"]["eps"],
            params["dbscan"]["min_samples"],
            round_to_fp16=clipad_mode(params) == "official",
        )

    def encoder(self, clip: LoadedClip, taps: list[int], params: dict) -> SurgeryEncoder:
        return SurgeryEncoder(
            clip.model.visual, taps, patch_taps=self.spec.trained_heads, clipad_mode=clipad_mode(params)
        ).eval()


@register
class Sdp(ClipAdMethod):
    spec = SDP
    defaults = {**ClipAdMethod.model_defaults, "clipad_mode": "official"}

    def assemble(self, clip: LoadedClip, taps: list[int], text: torch.Tensor, params: dict) -> MethodModules:
        linear = self.linear_heads(clip, taps, text) if self.spec.trained_heads else None
        heads = SdpHeads(text, clip.patch_grid, clip.input_size, linear).eval()
        return MethodModules(self.encoder(clip, taps, params), heads, list(self.spec.encoder_outputs), linear)

    def default_scoring(self, num_taps: int, image_threshold: float | None) -> dict:
        """Each tap's feature-surgery score is (s_a w_a - s_n w_n) / 2 with |s| <= 1 and w_a + w_n = 2, so in
        [-1, 1]; SDP+ adds [0, 1] per tap. Thresholds sit at the middle of each part's range."""
        low, high = float(-num_taps), float(num_taps * (2 if self.spec.trained_heads else 1))
        return {
            "rule": self.spec.score_rule,
            "text_score_range": [0.0, 1.0],
            "map_max_range": [low, high],
            "map_threshold": 0.5 * (low + high),
            "map_max": high,
            "image_threshold": 1.0 if image_threshold is None else image_threshold,
            "calibrated": False,
        }
