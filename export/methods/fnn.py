"""Random-word FNN: an FNN trained on CLIP text embeddings only, fused with the prompt score.

It runs on CLIP-AD's surgery encoder (its paper names no CLIP) in the clean CLIP-AD mode by
default; its choices are documented in export/models/fnn.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsad_edge.runtime.contract import FNN, FNN_WEIGHTS_FILE, RANDOM_WORD_FNN
from zsad_edge.runtime.errors import ModelLoadError

from ..models.clip import LoadedClip
from ..models.fnn import (
    FnnClassifier,
    FnnScorer,
    PromptProbabilityHeads,
    load_classifier,
    save_classifier,
    train_fnn_on_clip_text,
)
from ..models.prompts import PromptSet
from . import register
from .base import MethodModules
from .sdp import ClipAdMethod


@register
class Fnn(ClipAdMethod):
    spec = RANDOM_WORD_FNN
    defaults = {**ClipAdMethod.model_defaults, "clipad_mode": "clean", "fusion_weight": 0.5}
    options = (*ClipAdMethod.options, "fusion_weight")

    def params(self, object_name, prompt_set, gaussian_sigma, dataset, **options) -> dict:
        params = super().params(object_name, prompt_set, gaussian_sigma, dataset, **options)
        weight = options.get("fusion_weight")
        weight = self.defaults["fusion_weight"] if weight is None else weight
        if not 0.0 <= weight <= 1.0:
            raise ModelLoadError(f"--fusion-weight must be in [0, 1] (1 = FNN alone), got {weight}")
        return {**params, "fusion_weight": float(weight)}

    def assemble(self, clip: LoadedClip, taps: list[int], text: torch.Tensor, params: dict) -> MethodModules:
        scorer = FnnScorer(FnnClassifier(clip.embed_dim), clip.patch_grid, clip.input_size).eval()
        heads = PromptProbabilityHeads(text, clip.patch_grid, clip.input_size).eval()
        return MethodModules(
            self.encoder(clip, taps, params), heads, list(self.spec.encoder_outputs), extra_graphs={FNN: scorer}
        )

    def default_scoring(self, num_taps: int, image_threshold: float | None) -> dict:
        """Fused probabilities: map and score both in [0, 1]."""
        return {
            "rule": self.spec.score_rule,
            "map_threshold": 0.5,
            "map_max": 1.0,
            "image_threshold": 0.5 if image_threshold is None else image_threshold,
            "calibrated": False,
        }

    def prepare(self, modules: MethodModules, clip: LoadedClip, params: dict, config: Any) -> None:
        """Train the FNN on random-word prompt pairs (text only); the report goes into the manifest."""
        report = train_fnn_on_clip_text(
            modules.extra_graphs[FNN].classifier,
            clip.model,
            clip.tokenizer,
            PromptSet.load(params["prompt_set"]),
            config.fnn,
        )
        params["fnn"] = {"weights": FNN_WEIGHTS_FILE, "training": config.fnn.to_dict(), "report": report}

    def write_files(self, modules: MethodModules, staging: Path, params: dict) -> None:
        save_classifier(modules.extra_graphs[FNN].classifier, staging / params["fnn"]["weights"])

    def restore(self, modules: MethodModules, bundle_dir: Path, params: dict) -> None:
        load_classifier(modules.extra_graphs[FNN].classifier, Path(bundle_dir) / params["fnn"]["weights"])
