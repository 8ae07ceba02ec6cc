"""Exporting a SAM's image encoder and prompt decoder to ONNX, each checked against its torch module.

The encoder is traced at batch 1 with a dynamic batch (the runtime sends one image at a time; a
batch of 1 is what SAM's windowed attention reshapes are written for). The decoder has a dynamic
number of prompts (one cascade per anomalous region, batched) and of points per prompt; the image
embedding is one image's, shared by every prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zsad_edge.runtime.contract import (
    IMAGE,
    SAM_DECODER,
    SAM_DECODER_INPUTS,
    SAM_DECODER_OUTPUTS,
    SAM_ENCODER,
    SAM_IMAGE_EMBEDDINGS,
    onnx_file,
)

from ..models.sam import LoadedSam, SamDecoderGraph, SamEncoderGraph
from .onnx_export import MAX_BATCH, check_parity, export_module

MAX_POINTS = 64


def decoder_example(
    sam: LoadedSam, embeddings: torch.Tensor, prompts: int, points: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Random but valid decoder inputs: points inside the image, every label kind, some masks on."""
    size = sam.input_size
    low_res = 4 * sam.embedding_grid[0]
    coords = torch.rand(prompts, points, 2, generator=generator) * (size - 1)
    labels = torch.randint(-1, 4, (prompts, points), generator=generator).float()
    mask_input = torch.randn(prompts, 1, low_res, low_res, generator=generator)
    has_mask = (torch.arange(prompts) % 2).float()
    return embeddings, coords, labels, mask_input, has_mask


def export_sam_graphs(sam: LoadedSam, staging: Path, tolerance: float, seed: int = 0):
    """Write sam_encoder.onnx and sam_decoder.onnx; returns (components, parity) for the manifest."""
    generator = torch.Generator().manual_seed(seed + 3)
    size = sam.input_size
    encoder = SamEncoderGraph(sam.image_encoder).eval()
    decoder = SamDecoderGraph(sam.prompt_encoder, sam.mask_decoder).eval()

    def images(batch: int) -> tuple[torch.Tensor]:
        return (torch.randn(batch, 3, size, size, generator=generator),)

    with torch.no_grad():
        embeddings = encoder(*images(1))

    def decoder_inputs(batch: int) -> tuple[torch.Tensor, ...]:
        return decoder_example(sam, embeddings, prompts=batch, points=batch + 1, generator=generator)

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    encoder_spec = export_module(
        encoder,
        images(1),
        staging / onnx_file(SAM_ENCODER),
        [IMAGE],
        [SAM_IMAGE_EMBEDDINGS],
        dynamic_shapes=({0: batch},),
    )
    encoder_parity = check_parity(encoder, staging / encoder_spec.file, images, (1,), tolerance)
    prompts = torch.export.Dim("prompts", min=1, max=MAX_BATCH)
    points = torch.export.Dim("points", min=1, max=MAX_POINTS)
    decoder_spec = export_module(
        decoder,
        decoder_inputs(2),
        staging / onnx_file(SAM_DECODER),
        list(SAM_DECODER_INPUTS),
        list(SAM_DECODER_OUTPUTS),
        dynamic_shapes=({}, {0: prompts, 1: points}, {0: prompts, 1: points}, {0: prompts}, {0: prompts}),
    )
    decoder_parity = check_parity(decoder, staging / decoder_spec.file, decoder_inputs, (1, 3), tolerance)
    return (
        {SAM_ENCODER: encoder_spec, SAM_DECODER: decoder_spec},
        {SAM_ENCODER: encoder_parity.to_dict(), SAM_DECODER: decoder_parity.to_dict()},
    )
