"""Loading open_clip models and running their image encoder with intermediate taps.

Models are named as open_clip names them, (architecture, pretrained tag), or come from a local
checkpoint, or are randomly initialised for tests and timing. Running at another input size
(APRIL-GAN runs ViT-L-14-336 at 518 px) uses open_clip's own `force_image_size`, which
interpolates the position embedding when weights are loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from zsad_edge.runtime.bundle import sha256_file
from zsad_edge.runtime.errors import ModelLoadError

# Small architectures for CI and the offline demo, registered next to open_clip's own configs.
open_clip.add_model_config(Path(__file__).parent / "model_configs")

RANDOM_WEIGHTS_WARNING = "random weights: for tests and timing only, never for inspection"


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to load. Exactly one weight source: a pretrained tag, a checkpoint, or random."""

    architecture: str
    pretrained: str | None = None
    checkpoint: Path | None = None
    random_init: bool = False
    image_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        sources = sum([self.pretrained is not None, self.checkpoint is not None, self.random_init])
        if sources != 1:
            raise ModelLoadError(
                "choose exactly one CLIP weight source: --pretrained TAG, --clip-checkpoint PATH or --random-init"
            )


@dataclass
class LoadedClip:
    """An open_clip model in eval mode plus where its weights came from (for the manifest)."""

    model: nn.Module
    tokenizer: Any
    weights_origin: dict[str, Any]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    @property
    def input_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def num_layers(self) -> int:
        return len(self.model.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        return self.model.visual.transformer.width

    @property
    def embed_dim(self) -> int:
        return self.model.visual.output_dim

    @property
    def patch_grid(self) -> tuple[int, int]:
        height, width = self.input_size
        patch = self.model.visual.patch_size
        return height // patch[0], width // patch[1]


def load_clip(spec: ClipSpec) -> LoadedClip:
    """Create the model as open_clip would; every failure becomes a ModelLoadError with a fix."""
    if spec.architecture not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip architecture {spec.architecture!r}; see open_clip.list_models() "
            "(e.g. ViT-B-16, ViT-L-14-336, ViT-B-16-plus-240, zsad-tiny-vit)"
        )
    kwargs: dict[str, Any] = {"force_image_size": spec.image_size}
    if spec.pretrained is not None:
        tag_cfg = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(spec.architecture)
            raise ModelLoadError(f"unknown pretrained tag {spec.pretrained!r} for {spec.architecture}; known tags: {tags}")
        # The tag records whether the weights were trained with QuickGELU (OpenAI's were).
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
        pretrained, origin = spec.pretrained, {"kind": "pretrained", "tag": spec.pretrained}
    elif spec.checkpoint is not None:
        checkpoint = Path(spec.checkpoint)
        if not checkpoint.is_file():
            raise ModelLoadError(f"CLIP checkpoint not found: {checkpoint}")
        pretrained = str(checkpoint)
        origin = {"kind": "checkpoint", "file": checkpoint.name, "sha256": sha256_file(checkpoint)}
    else:
        torch.manual_seed(spec.seed)
        pretrained, origin = None, {"kind": "random", "seed": spec.seed, "warning": RANDOM_WEIGHTS_WARNING}
    try:
        model = open_clip.create_model(spec.architecture, pretrained=pretrained, weights_only=True, **kwargs)
    except RuntimeError as exc:
        if spec.pretrained is not None:
            raise ModelLoadError(
                f"could not download open_clip weights {spec.architecture}/{spec.pretrained} "
                "(model hub unreachable or weights not cached); on an offline machine pass a local file "
                "with --clip-checkpoint PATH"
            ) from None
        raise ModelLoadError(f"checkpoint {spec.checkpoint} does not fit {spec.architecture}: {str(exc)[:300]}") from None
    except Exception as exc:  # torch.load / safetensors errors on corrupt files
        raise ModelLoadError(f"cannot read CLIP weights for {spec.architecture}: {type(exc).__name__}: {str(exc)[:300]}") from None
    model.eval()
    logging.getLogger(__name__).info("loaded %s (%s)", spec.architecture, origin["kind"])
    preprocess = getattr(model.visual, "preprocess_cfg", {})
    return LoadedClip(
        model=model,
        tokenizer=open_clip.get_tokenizer(spec.architecture),
        weights_origin=origin,
        mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=preprocess.get("interpolation", "bicubic"),
    )


def default_taps(num_layers: int) -> list[int]:
    """Four evenly spaced 1-based block indices ending at the last block (6/12/18/24 for 24 blocks)."""
    step = max(num_layers // 4, 1)
    return sorted({min(step * k, num_layers) for k in range(1, 5)})


def validate_taps(taps: list[int], num_layers: int) -> list[int]:
    """Check 1-based tap indices against the model depth."""
    if not taps or any(t < 1 or t > num_layers for t in taps) or len(set(taps)) != len(taps):
        raise ModelLoadError(f"taps must be distinct block indices in 1..{num_layers}, got {taps}")
    return sorted(taps)


class ImageEncoderWithTaps(nn.Module):
    """CLIP image encoder returning the pooled embedding and the raw residual stream of chosen blocks.

    taps are 1-based block indices; each tap is the block output before ln_post with the class
    token dropped, stacked into one tensor [B, n_taps, N_patches, width] so that the exported
    graph has a fixed, small set of outputs whatever the number of taps.
    """

    def __init__(self, visual: nn.Module, taps: list[int]) -> None:
        super().__init__()
        self.visual = visual
        self.indices = [t - 1 for t in taps]

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.visual.forward_intermediates(image, indices=self.indices, output_fmt="NLC")
        return out["image_features"], torch.stack(out["image_intermediates"], dim=1)
