"""Training APRIL-GAN linear heads (CLIP frozen) on an MVTec-layout folder.

As published: focal loss (gamma 2) + dice loss on each tap's abnormal-probability map against the
ground-truth mask, Adam (lr 1e-3, betas 0.5/0.999), batch 8; train on one data set, test on
another. The images used are every test image with a usable mask (good images count as all-normal),
which is how APRIL-GAN trains on one set's test split to evaluate on another set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from zsad_edge.runtime.dataset import load_mask, scan_dataset
from zsad_edge.runtime.errors import ImageReadError, ZsadEdgeError
from zsad_edge.runtime.image_io import read_image, to_rgb_float
from zsad_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

from .aprilgan import OFFICIAL_CHECKPOINT_KEY, AprilGanHeads
from .clip_backbone import ImageEncoderWithTaps

LOG = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    focal_gamma: float = 2.0
    max_images: int | None = None
    seed: int = 0


@dataclass
class TrainingData:
    """Preprocessed images [N, 3, H, W] and masks [N, H, W] at the model's input size."""

    images: torch.Tensor
    masks: torch.Tensor
    skipped: list[str] = field(default_factory=list)


def load_training_data(dataset_dir: Path, spec: PreprocessSpec, max_images: int | None = None) -> TrainingData:
    """Every test image with a usable mask; what cannot be used is listed in `skipped`."""
    images, masks, skipped = [], [], []
    for category in scan_dataset(dataset_dir):
        skipped += [f"{category.name}: {p}" for p in category.problems]
        for sample in category.samples:
            try:
                rgb = to_rgb_float(read_image(sample.image))
                mask = load_mask(sample, rgb.shape[:2])
            except ImageReadError as exc:
                skipped.append(str(exc))
                continue
            if mask is None:
                continue
            images.append(rgb)
            height, width = spec.input_size
            masks.append(cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST))
    if not images:
        raise ZsadEdgeError(f"no image with a usable mask under {dataset_dir}: nothing to train on")
    if max_images is not None:
        order = np.random.default_rng(0).permutation(len(images))[:max_images]
        images, masks = [images[i] for i in order], [masks[i] for i in order]
    return TrainingData(torch.from_numpy(preprocess_batch(images, spec)),
                        torch.from_numpy(np.stack(masks).astype(np.float32)), skipped)


def focal_loss(probability: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary focal loss on the abnormal-class probability, mean over pixels."""
    p_true = torch.where(target > 0.5, probability, 1 - probability).clamp(1e-6, 1.0)
    return (-(1 - p_true) ** gamma * torch.log(p_true)).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the abnormal probability against the mask, over the whole batch."""
    intersection = (probability * target).sum()
    return 1 - (2 * intersection + smooth) / (probability.sum() + target.sum() + smooth)


def train_heads(encoder: ImageEncoderWithTaps, heads: AprilGanHeads, data: TrainingData, config: TrainConfig,
                progress: bool = True) -> list[float]:
    """Train heads.fc in place; returns the mean loss of each epoch. Reproducible for a seed."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(heads.fc.parameters(), lr=config.learning_rate, betas=config.betas)
    encoder.eval()
    heads.train()
    epoch_losses = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(data.images), generator=generator)
        losses = []
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress):
            index = order[start:start + config.batch_size]
            with torch.no_grad():
                _, taps = encoder(data.images[index])
            probabilities = heads.tap_probabilities(taps)  # [B, T, H, W]
            target = data.masks[index]
            loss = sum(focal_loss(probabilities[:, t], target, config.focal_gamma) + dice_loss(probabilities[:, t], target)
                       for t in range(probabilities.shape[1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        epoch_losses.append(float(np.mean(losses)))
        LOG.info("epoch %d: loss %.4f", epoch + 1, epoch_losses[-1])
    heads.eval()
    return epoch_losses


def save_heads_checkpoint(heads: AprilGanHeads, path: Path, metadata: dict) -> None:
    """Official APRIL-GAN layout ({'trainable_linearlayer': fc weights}) plus our metadata, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in heads.state_dict().items() if k.startswith("fc.")}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({OFFICIAL_CHECKPOINT_KEY: state, "zsad_edge": metadata}, tmp)
    tmp.replace(path)
