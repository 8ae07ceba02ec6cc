"""The methods a bundle can carry: published defaults as data, and the torch modules each exports.

A bundle is two graphs, image encoder -> heads, plus for the FNN method a third, `fnn`, beside the
heads. Heads and FNN consume every encoder output by name and give `anomaly_map` (input size,
before smoothing) and `image_score`.
Building and rebuilding the PyTorch reference from a manifest both call `assemble`, so the
reference is the very module graph the ONNX came from.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
from torch import nn

from zsad_edge.runtime.errors import ModelLoadError

from .aprilgan import LOGIT_SCALE, AprilGanHeads
from .clip_backbone import ImageEncoderWithTaps, LoadedClip
from .defaults import CLIPAD_MODES, METHOD_DEFAULTS
from .fnn import FnnClassifier, FnnScorer, PromptProbabilityHeads
from .prompts import PromptSet, class_text_features
from .sdp import DBSCAN_SETTINGS, LEGACY_CLIPAD_MODE, SdpHeads, SurgeryEncoder, representative_text_features

METHODS = tuple(METHOD_DEFAULTS)
# Methods with trained linear heads (APRIL-GAN recipe on the original taps).
METHODS_WITH_HEADS = ("aprilgan", "sdpplus")
# Names in the manifest; APRIL-GAN's says the bundle is zero-shot (few-shot is a memory bank file).
MANIFEST_NAMES = {"aprilgan": "aprilgan_zero_shot", "sdp": "sdp", "sdpplus": "sdpplus", "fnn": "fnn"}
HEADS_OUTPUTS = ["anomaly_map", "image_score"]


@dataclass
class MethodModules:
    """The modules to export, the encoder's output names, and the trainable parts if any."""

    encoder: nn.Module
    heads: nn.Module
    encoder_outputs: list[str]
    linear_heads: AprilGanHeads | None = None
    fnn: FnnScorer | None = None


def method_from_manifest(name: str) -> str:
    for method, manifest_name in MANIFEST_NAMES.items():
        if manifest_name == name:
            return method
    raise ModelLoadError(f"bundle method {name!r} has no PyTorch reference here (known: {', '.join(MANIFEST_NAMES.values())})")


def text_features(method: str, clip: LoadedClip, params: dict) -> torch.Tensor:
    """Class vectors T [embed_dim, 2] from the method's prompt recipe (params as in the manifest)."""
    prompt_set = PromptSet.load(params["prompt_set"])
    if method == "aprilgan":
        return class_text_features(clip.model, clip.tokenizer, prompt_set, params["object_name"])
    eps, min_samples = params["dbscan"]["eps"], params["dbscan"]["min_samples"]
    return representative_text_features(clip.model, clip.tokenizer, prompt_set, params["object_name"], eps, min_samples,
                                        round_to_fp16=clipad_mode(params) == "official")


def clipad_mode(params: dict) -> str:
    """A bundle's CLIP-AD mode; bundles from before it was recorded computed the clean one."""
    return params.get("clipad_mode", LEGACY_CLIPAD_MODE)


def method_params(method: str, object_name: str, prompt_set: str | None, gaussian_sigma: float | None,
                  dbscan: str, fusion_weight: float | None = None, clipad: str | None = None) -> dict:
    """The manifest's method parameters: everything that changes the numbers, with defaults filled in."""
    defaults = METHOD_DEFAULTS[method]
    if dbscan not in DBSCAN_SETTINGS:
        raise ModelLoadError(f"unknown data-set setting {dbscan!r}; choose one of {', '.join(DBSCAN_SETTINGS)}")
    params: dict = {
        "object_name": object_name,
        "prompt_set": prompt_set or defaults["prompt_set"],
        "logit_scale": LOGIT_SCALE,
        "gaussian_sigma": float(defaults["gaussian_sigma"][dbscan] if gaussian_sigma is None else gaussian_sigma),
    }
    if method != "aprilgan":
        eps, min_samples = DBSCAN_SETTINGS[dbscan]
        params["dbscan"] = {"setting": dbscan, "eps": eps, "min_samples": min_samples}
        mode = clipad or defaults["clipad_mode"]
        if mode not in CLIPAD_MODES:
            raise ModelLoadError(f"unknown CLIP-AD mode {mode!r}; choose one of {', '.join(CLIPAD_MODES)}")
        params["clipad_mode"] = mode
    elif clipad is not None:
        raise ModelLoadError("--clipad-mode applies to the CLIP-AD encoder (sdp, sdpplus, fnn), not to aprilgan")
    if method == "fnn":
        weight = defaults["fusion_weight"] if fusion_weight is None else fusion_weight
        if not 0.0 <= weight <= 1.0:
            raise ModelLoadError(f"--fusion-weight must be in [0, 1] (1 = FNN alone), got {weight}")
        params["fusion_weight"] = float(weight)
    return params


def assemble(method: str, clip: LoadedClip, taps: list[int], text: torch.Tensor, params: dict) -> MethodModules:
    """Encoder and heads modules of a method for a loaded CLIP (heads untrained); params as in the manifest."""
    linear_heads = None
    if method in METHODS_WITH_HEADS:
        linear_heads = AprilGanHeads(len(taps), clip.width, clip.embed_dim, text, clip.input_size,
                                     clip.patch_grid).eval()
    if method == "aprilgan":
        return MethodModules(ImageEncoderWithTaps(clip.model.visual, taps).eval(), linear_heads,
                             ["image_embedding", "taps"], linear_heads)
    encoder = SurgeryEncoder(clip.model.visual, taps, patch_taps=linear_heads is not None,
                             clipad_mode=clipad_mode(params)).eval()
    outputs = ["image_embedding", "surgery_taps"] + (["taps"] if linear_heads is not None else [])
    if method == "fnn":
        scorer = FnnScorer(FnnClassifier(clip.embed_dim), clip.patch_grid, clip.input_size).eval()
        return MethodModules(encoder, PromptProbabilityHeads(text, clip.patch_grid, clip.input_size).eval(), outputs,
                             fnn=scorer)
    heads = SdpHeads(text, clip.patch_grid, clip.input_size, linear_heads).eval()
    return MethodModules(encoder, heads, outputs, linear_heads)


def default_scoring(method: str, num_taps: int, image_threshold: float | None) -> dict:
    """Uncalibrated scoring constants from each method's theoretical map bounds.

    APRIL-GAN: each tap's probability is in [0, 1]; FNN: fused probabilities in [0, 1]. SDP: each tap's feature-surgery score is
    (s_a w_a - s_n w_n) / 2 with |s| <= 1 and w_a + w_n = 2, so within [-1, 1]; SDP+ adds [0, 1].
    Thresholds sit at the middle of each part's range until `zsad-edge calibrate` sets them.
    """
    if method == "aprilgan":
        return {"rule": "prompt", "map_threshold": 0.5 * num_taps, "map_max": float(num_taps),
                "image_threshold": 0.5 if image_threshold is None else image_threshold, "calibrated": False}
    if method == "fnn":  # fused probabilities, map and score both in [0, 1]
        return {"rule": "prompt", "map_threshold": 0.5, "map_max": 1.0,
                "image_threshold": 0.5 if image_threshold is None else image_threshold, "calibrated": False}
    low, high = (-num_taps, 2 * num_taps) if method == "sdpplus" else (-num_taps, num_taps)
    return {"rule": "normalised_sum", "text_score_range": [0.0, 1.0], "map_max_range": [float(low), float(high)],
            "map_threshold": 0.5 * (low + high), "map_max": float(high),
            "image_threshold": 1.0 if image_threshold is None else image_threshold, "calibrated": False}
