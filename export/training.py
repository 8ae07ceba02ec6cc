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
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from zsad_edge.runtime.errors import ImageReadError, ZsadEdgeError
from zsad_edge.runtime.evaluation.dataset import Sample, load_mask, scan_dataset
from zsad_edge.runtime.image_io import check_image, read_image
from zsad_edge.runtime.preprocess import PreprocessSpec, preprocess_batch

from .models.aprilgan import OFFICIAL_CHECKPOINT_KEY, TRAINING_RECORD_KEY, AprilGanHeads

LOG = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.999)
    focal_gamma: float = 2.0
    seed: int = 0


@dataclass
class TrainingData:
    """Usable (image, mask) files, read and preprocessed batch by batch so that large sets
    (VisA at 518 px is tens of GB as float tensors) never sit in memory at once."""

    samples: list[Sample]
    spec: PreprocessSpec
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, 3, H, W] and masks [B, H, W] at the model's input size."""
        height, width = self.spec.input_size
        images, masks = [], []
        for index in indices:
            sample = self.samples[index]
            image = check_image(read_image(sample.image))
            mask = load_mask(sample, image.shape[:2])
            images.append(image)
            masks.append(cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST))
        return (
            torch.from_numpy(preprocess_batch(images, self.spec)),
            torch.from_numpy(np.stack(masks).astype(np.float32)),
        )


def load_training_data(dataset_dir: Path, spec: PreprocessSpec, max_images: int | None = None) -> TrainingData:
    """Every test image with a usable mask (checked once up front); the rest is listed in `skipped`."""
    samples, skipped = [], []
    for category in scan_dataset(dataset_dir):
        skipped += [f"{category.name}: {p}" for p in category.problems]
        for sample in category.samples:
            try:
                shape = read_image(sample.image).shape[:2]
                usable = load_mask(sample, shape) is not None
            except ImageReadError as exc:
                skipped.append(str(exc))
                continue
            if usable:
                samples.append(sample)
    if not samples:
        raise ZsadEdgeError(f"no image with a usable mask under {dataset_dir}: nothing to train on")
    if max_images is not None:
        samples = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))[:max_images]]
    return TrainingData(samples, spec, skipped)


def focal_loss(probability: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary focal loss on the abnormal-class probability, mean over pixels."""
    p_true = torch.where(target > 0.5, probability, 1 - probability).clamp(1e-6, 1.0)
    return (-((1 - p_true) ** gamma) * torch.log(p_true)).mean()


def dice_loss(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the abnormal probability against the mask, over the whole batch."""
    intersection = (probability * target).sum()
    return 1 - (2 * intersection + smooth) / (probability.sum() + target.sum() + smooth)


def train_heads(
    encoder: nn.Module, heads: AprilGanHeads, data: TrainingData, config: TrainConfig, progress: bool = True
) -> list[float]:
    """Train heads.fc in place; returns the mean loss of each epoch. Reproducible for a seed.

    encoder: the method's encoder module, whose last output is the taps the heads read
    (ImageEncoderWithTaps for APRIL-GAN, SurgeryEncoder with patch taps for SDP+).
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(heads.fc.parameters(), lr=config.learning_rate, betas=config.betas)
    encoder.eval()
    heads.train()
    epoch_losses = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(data), generator=generator).tolist()
        losses = []
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress):
            images, target = data.batch(order[start : start + config.batch_size])
            with torch.no_grad():
                taps = encoder(images)[-1]
            probabilities = heads.tap_probabilities(taps)  # [B, T, H, W]
            loss = sum(
                focal_loss(probabilities[:, t], target, config.focal_gamma) + dice_loss(probabilities[:, t], target)
                for t in range(probabilities.shape[1])
            )
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
    torch.save({OFFICIAL_CHECKPOINT_KEY: state, TRAINING_RECORD_KEY: metadata}, tmp)
    tmp.replace(path)
