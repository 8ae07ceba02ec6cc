"""Loading open_clip models and running their image encoder with intermediate taps.

Models are named as open_clip names them, (architecture, pretrained tag), or come from a local
checkpoint, or are randomly initialised for tests and timing. Running at another input size
(APRIL-GAN runs ViT-L-14-336 at 518 px) uses open_clip's own `force_image_size`, which
interpolates the position embedding when weights are loaded.

The MLP activation (GELU or QuickGELU) is resolved once, by one rule for every weight source, and
recorded in the manifest: the official APRIL-GAN code builds ViT-L-14-336 from its JSON config
whenever the size is not 336, so its published results and heads ran OpenAI's weights with GELU.
"""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transformer import QuickGELU
from torch import nn

from zsad_edge.runtime.bundle import sha256_file
from zsad_edge.runtime.errors import ModelLoadError
from zsad_edge.runtime.preprocess import PreprocessSpec, official_interpolation

from ..defaults import ACTIVATION_CHOICES

# Small architectures for CI and the offline demo, registered next to open_clip's own configs.
open_clip.add_model_config(Path(__file__).parent / "model_configs")

RANDOM_WEIGHTS_WARNING = "random weights: for tests and timing only, never for inspection"
MODEL_HUB_HOST = "huggingface.co"  # where open_clip's pretrained tags are downloaded from
ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to load. Exactly one weight source: a pretrained tag, a checkpoint, or random."""

    architecture: str
    pretrained: str | None = None
    checkpoint: Path | None = None
    random_init: bool = False
    image_size: int | None = None
    seed: int = 0
    activation: str = "auto"  # "gelu", "quick_gelu", or "auto" (resolve_activation)

    def __post_init__(self) -> None:
        sources = sum([self.pretrained is not None, self.checkpoint is not None, self.random_init])
        if sources != 1:
            raise ModelLoadError(
                "choose exactly one CLIP weight source: --pretrained TAG, --clip-checkpoint PATH or --random-init"
            )
        if self.activation not in ACTIVATION_CHOICES:
            raise ModelLoadError(
                f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATION_CHOICES)}"
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
    activation: dict[str, str]  # {"name": "gelu" | "quick_gelu", "rule": why}

    def preprocess_spec(self) -> PreprocessSpec:
        """The official input rule: stretch to the input size with Pillow's kernel (runtime/preprocess.py)."""
        return PreprocessSpec(
            self.input_size, self.mean, self.std, "stretch", official_interpolation(self.interpolation)
        )

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


@contextmanager
def _hub_offline():
    """The model hub client in offline mode: weights come from the local cache or not at all."""
    from huggingface_hub import constants

    before, quiet = constants.HF_HUB_OFFLINE, logging.root.manager.disable
    constants.HF_HUB_OFFLINE = True
    logging.disable(logging.ERROR)  # open_clip logs a cache miss as an error; here it is a normal answer
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
        logging.disable(quiet)


def _reachable(host: str, timeout_s: float = 5.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _create_pretrained(architecture: str, tag: str, kwargs: dict) -> Any:
    """open_clip's model with a pretrained tag: from the local cache when it is there; else
    downloaded, once the hub has answered. Offline, the hub client would retry for about a minute
    and print each retry; here the answer is one line at once."""
    try:
        with _hub_offline():
            return open_clip.create_model(architecture, pretrained=tag, weights_only=True, **kwargs)
    except Exception:  # not in the local cache
        pass
    if not _reachable(MODEL_HUB_HOST):
        raise ModelLoadError(
            f"open_clip weights {architecture}/{tag} are not in the local cache and the model hub "
            f"({MODEL_HUB_HOST}) cannot be reached; on an offline machine pass a local file with --clip-checkpoint PATH"
        )
    return open_clip.create_model(architecture, pretrained=tag, weights_only=True, **kwargs)


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
            raise ModelLoadError(
                f"unknown pretrained tag {spec.pretrained!r} for {spec.architecture}; known tags: {tags}"
            )
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
        if spec.pretrained is not None:
            model = _create_pretrained(spec.architecture, spec.pretrained, kwargs)
        else:
            model = open_clip.create_model(spec.architecture, pretrained=pretrained, weights_only=True, **kwargs)
    except RuntimeError as exc:
        if spec.pretrained is not None:
            raise ModelLoadError(
                f"could not download open_clip weights {spec.architecture}/{spec.pretrained} "
                f"({str(exc).strip().splitlines()[0][:200]}); on an offline machine pass a local file "
                "with --clip-checkpoint PATH"
            ) from None
        raise ModelLoadError(
            f"checkpoint {spec.checkpoint} does not fit {spec.architecture}: {str(exc)[:300]}"
        ) from None
    except ModelLoadError:
        raise
    except Exception as exc:  # torch.load / safetensors errors on corrupt files
        raise ModelLoadError(
            f"cannot read CLIP weights for {spec.architecture}: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    activation = resolve_activation(spec)
    set_activation(model, activation["name"])
    model.eval()
    logging.getLogger(__name__).info("loaded %s (%s, %s)", spec.architecture, origin["kind"], activation["name"])
    preprocess = getattr(model.visual, "preprocess_cfg", {})
    return LoadedClip(
        model=model,
        tokenizer=open_clip.get_tokenizer(spec.architecture),
        weights_origin=origin,
        mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=preprocess.get("interpolation", "bicubic"),
        activation=activation,
    )


def resolve_activation(spec: ClipSpec) -> dict[str, str]:
    """The MLP activation to build with, and why; the same rule whatever the weight source.

    "auto" follows the official code's factory: at a size other than the architecture's own it
    builds the model from the JSON config (GELU unless the config says QuickGELU), which is how
    APRIL-GAN ran OpenAI's ViT-L-14-336 at 518 px. At the architecture's own size a pretrained tag
    decides (OpenAI's weights were trained with QuickGELU); a checkpoint keeps the config's.
    """
    if spec.activation != "auto":
        return {"name": spec.activation, "rule": "chosen with --activation"}
    config = open_clip.get_model_config(spec.architecture)
    configured = "quick_gelu" if config.get("quick_gelu") else "gelu"
    native = config["vision_cfg"]["image_size"]
    native = native if isinstance(native, int) else native[0]
    size = spec.image_size or native
    if size != native:
        return {
            "name": configured,
            "rule": f"auto: {size} px is not the architecture's {native} px, so the official "
            f"code builds the model from its config ({configured})",
        }
    if spec.pretrained is not None:
        tag_cfg = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained)
        if tag_cfg.get("quick_gelu"):
            return {"name": "quick_gelu", "rule": f"auto: tag {spec.pretrained!r} was trained with QuickGELU"}
    elif spec.checkpoint is not None and "openai" in open_clip.list_pretrained_tags_by_model(spec.architecture):
        logging.getLogger(__name__).warning(
            "%s at its own size from a checkpoint: built with the config's %s; if these are OpenAI's weights "
            "pass --activation quick_gelu",
            spec.architecture,
            configured,
        )
    return {"name": configured, "rule": f"auto: the architecture config's activation ({configured})"}


def set_activation(model: nn.Module, name: str) -> None:
    """Make every MLP activation of both towers `name` (both layers are stateless, so this is exact)."""
    layer = ACTIVATION_LAYERS[name]
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, tuple(ACTIVATION_LAYERS.values())) and type(child) is not layer:
                setattr(parent, child_name, layer())


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
