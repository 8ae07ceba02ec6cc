"""CLIP-AD staged dual path (SDP): the PyTorch reference of the surgery encoder and feature surgery.

Architecture surgery: every block's attention also runs a second, v-v path (q = k = v = the value
projection of ln_1 of the block's input, same heads, scale and out projection, no FFN). The
surgery stream x_s accumulates these outputs and restarts at the first block of each stage, the
stages ending at the taps (blocks 0, 3, 6, 9 zero-based for taps 3, 6, 9, 12). The original path
is unchanged CLIP. At a tap, surgery features are proj(ln_post(x_s with its CLS token replaced by
the original CLS)).

Feature surgery per tap (F normalised incl. CLS, T [E, 2]): p = softmax(F_cls @ T), w = p / mean(p),
s[n, c] = (F @ T)[n, c] * w[c] minus its mean over classes; summed over taps, CLS dropped, as a
grid, bilinear (align_corners=False) to the input size, abnormal channel. Smoothing (Gaussian)
and score normalisation happen after the graph, in the runtime.

SDP+ adds APRIL-GAN-style linear heads (Linear(width -> embed_dim) per tap on the ORIGINAL
path's patch tokens, sigmoid/softmax map per tap, summed) to the SDP map before smoothing.

CLIP-AD modes (manifest: method.params.clipad_mode):
- "official" reproduces two quirks of the published code, which its published numbers and SDP+
  heads come from. (1) Its transformer adds the original path's attention residual in place into
  the tensor it already stored as the previous tap, so a tap k before the last block holds block
  k's output plus block k+1's attention residual; those tokens, and the CLS copied into the surgery
  features, are what its heads saw. (2) It rounds the DBSCAN representative text vectors to float16
  before normalising them.
- "clean" takes the block outputs as they are and keeps the text vectors in float32.
Stage restarts: the official code restarts the surgery stream every n_blocks / 4 blocks; here it
restarts after each tap. The two agree for the published taps (3, 6, 9, 12 of 12 blocks).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN
from torch import nn

from ..defaults import CLIPAD_MODES
from .aprilgan import LOGIT_SCALE, AprilGanHeads
from .prompts import PromptSet, encode_sentences

# DBSCAN settings of CLIP-AD per data set family: (eps, min_samples).
DBSCAN_SETTINGS = {"mvtec": (0.5, 15), "visa": (1.5, 25)}
# What bundles built before the mode was recorded computed.
LEGACY_CLIPAD_MODE = "clean"


def representative_vector(
    embeddings: torch.Tensor, eps: float, min_samples: int, round_to_fp16: bool = False
) -> torch.Tensor:
    """Mean of the largest DBSCAN cluster of normalised prompt embeddings, re-normalised.

    Falls back to the plain mean when DBSCAN finds no cluster (every prompt is noise).
    round_to_fp16: as the official code does, the mean is cast to float16 and normalised in
    float16 (the result is returned as float32 holding those float16 values).
    """
    normalised = F.normalize(embeddings.float(), dim=-1)
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit(normalised.numpy()).labels_
    clustered = labels[labels >= 0]
    if clustered.size:
        largest = np.bincount(clustered).argmax()
        normalised = normalised[torch.from_numpy(labels == largest)]
    mean = normalised.mean(dim=0)
    if round_to_fp16:
        mean = mean.half()
        return (mean / mean.norm()).float()
    return F.normalize(mean, dim=0)


def representative_text_features(
    model: nn.Module,
    tokenizer,
    prompt_set: PromptSet,
    object_name: str,
    eps: float,
    min_samples: int,
    round_to_fp16: bool = False,
) -> torch.Tensor:
    """CLIP-AD class vectors T [embed_dim, 2] (column 0 normal, 1 abnormal), one DBSCAN per class."""
    columns = [
        representative_vector(encode_sentences(model, tokenizer, sentences), eps, min_samples, round_to_fp16)
        for sentences in prompt_set.sentences(object_name)
    ]
    return torch.stack(columns, dim=1)


def vv_attention(attention: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Self-attention of the value projection with itself, through the block's own weights."""
    batch, tokens, width = x.shape
    heads = attention.num_heads
    head_dim = width // heads
    value = F.linear(x, attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :])
    value = value.reshape(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, H, N, D]
    weights = ((value * head_dim**-0.5) @ value.transpose(-2, -1)).softmax(dim=-1)
    out = (weights @ value).transpose(1, 2).reshape(batch, tokens, width)
    return attention.out_proj(out)


class SurgeryEncoder(nn.Module):
    """open_clip ViT with the staged v-v surgery path.

    forward(image) -> (image_embedding [B, E], surgery_taps [B, T, 1+N, E]) and, with
    `patch_taps=True` (SDP+), also taps [B, T, N, width]: the original path's patch tokens at the
    taps, what the SDP+ linear heads read.
    clipad_mode "official": a tap before the last block is read after the next block's attention
    residual has been added (the official in-place aliasing); "clean": the block output.
    """

    def __init__(
        self, visual: nn.Module, taps: list[int], patch_taps: bool = False, clipad_mode: str = "official"
    ) -> None:
        super().__init__()
        if clipad_mode not in CLIPAD_MODES:
            raise ValueError(f"unknown CLIP-AD mode {clipad_mode!r}; choose one of {', '.join(CLIPAD_MODES)}")
        self.visual = visual
        self.taps = sorted(taps)
        self.stage_starts = {0, *self.taps[:-1]}  # zero-based first block of each stage
        self.patch_taps = patch_taps
        self.aliased_taps = clipad_mode == "official"

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        visual = self.visual
        blocks = visual.transformer.resblocks
        x = visual._embeds(image)
        surgery = None
        waiting = None  # official mode: a tap's surgery stream, read out after the next block's attention
        surgery_taps, original_taps = [], []
        for index, block in enumerate(blocks):
            normed = block.ln_1(x)
            out = vv_attention(block.attn, normed)
            # open_clip's block, in its two halves, so the stream between them can be read.
            x = x + block.ls_1(block.attention(q_x=normed))
            if waiting is not None:
                self._read_tap(waiting, x, surgery_taps, original_taps)
                waiting = None
            surgery = out if index in self.stage_starts else surgery + out
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
            if index + 1 in self.taps:
                if self.aliased_taps and index + 1 < len(blocks):
                    waiting = surgery
                else:
                    self._read_tap(surgery, x, surgery_taps, original_taps)
        pooled, _ = visual._pool(x)
        outputs = (pooled @ visual.proj, torch.stack(surgery_taps, dim=1))
        return outputs + (torch.stack(original_taps, dim=1),) if self.patch_taps else outputs

    def _read_tap(self, surgery: torch.Tensor, original: torch.Tensor, surgery_taps: list, original_taps: list) -> None:
        """Surgery tokens with the original CLS, into the joint space; the original patch tokens as they are."""
        with_cls = torch.cat([original[:, :1], surgery[:, 1:]], dim=1)
        surgery_taps.append(self.visual.ln_post(with_cls) @ self.visual.proj)
        original_taps.append(original[:, 1:])


def feature_surgery_map(
    surgery_taps: torch.Tensor, text_features: torch.Tensor, patch_grid: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """Summed feature-surgery scores -> abnormal channel at input size [B, H, W] (before smoothing)."""
    features = F.normalize(surgery_taps, dim=-1)  # [B, T, 1+N, E]
    similarity = features @ text_features  # [B, T, 1+N, 2]
    probability = similarity[:, :, :1].softmax(dim=-1)  # [B, T, 1, 2] from the CLS token
    weighted = similarity * (probability / probability.mean(dim=-1, keepdim=True))
    scores = (weighted - weighted.mean(dim=-1, keepdim=True)).sum(dim=1)[:, 1:]  # [B, N, 2]
    # Interpolation acts per channel, so upsampling the abnormal channel alone is the same map.
    grid = scores[..., 1].reshape(scores.shape[0], 1, *patch_grid)
    return F.interpolate(grid, size=input_size, mode="bilinear", align_corners=False)[:, 0]


def text_probability(image_embedding: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """softmax(100 * normalise(image embedding) @ T)[abnormal]."""
    return (LOGIT_SCALE * F.normalize(image_embedding, dim=-1) @ text_features).softmax(dim=-1)[:, 1]


class SdpHeads(nn.Module):
    """The SDP (and, given linear heads, SDP+) map and prompt score, as one exportable graph.

    forward(image_embedding, surgery_taps[, taps]) -> (anomaly_map [B, H, W] before smoothing,
    image_score [B] = the prompt probability; the runtime combines it with the map peak).
    """

    def __init__(
        self,
        text_features: torch.Tensor,
        patch_grid: tuple[int, int],
        input_size: tuple[int, int],
        linear_heads: AprilGanHeads | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("text_features", text_features.float().clone())
        self.patch_grid = tuple(patch_grid)
        self.input_size = tuple(input_size)
        self.linear_heads = linear_heads

    def forward(
        self, image_embedding: torch.Tensor, surgery_taps: torch.Tensor, taps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        anomaly_map = feature_surgery_map(surgery_taps, self.text_features, self.patch_grid, self.input_size)
        if self.linear_heads is not None:
            anomaly_map = anomaly_map + self.linear_heads.tap_probabilities(taps).sum(dim=1)
        return anomaly_map, text_probability(image_embedding, self.text_features)
