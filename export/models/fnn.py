"""Random-word data augmentation: an FNN trained on CLIP text embeddings only, scoring images.

Only the paper's abstract is known: prompts made of normal / anomaly words plus several randomly
generated words are encoded by the CLIP text encoder into many normal and anomalous embeddings
(about 10,000 pairs worked best), and a 4-layer feed-forward network learns normal vs anomaly on
them; at inference it scores image and patch embeddings. Everything else is ours, named here:

- Prompts (`RandomWordConfig`): one of the prompt set's templates around one state phrase
  (normal or abnormal, filled with the neutral object word "object"), then 1 to 3 random
  pseudo-words, each 3 to 10 uniformly drawn lowercase letters, inserted at random word
  positions. The two prompts of a pair share template and random words, so the only difference
  the network can learn from is the state phrase.
- Network (`FnnClassifier`): Linear(E, 512) - ReLU - Linear(512, 256) - ReLU - Linear(256, 128) -
  ReLU - Linear(128, 2) on L2-normalised embeddings; softmax, abnormal column.
- Training (`FnnTrainConfig`): cross-entropy, Adam lr 1e-3, batch 256, 20 epochs, 10 % of the
  pairs held out for an accuracy report, seeded.
- Scoring (`FnnScorer`): image score = FNN(normalised image embedding); map = FNN on each
  normalised surgery patch token (CLIP-AD's v-v path, already in the joint space, and local,
  unlike the original path's patch tokens) averaged over taps, upsampled bilinearly.
- Fusion with the prompt score (runtime): fused = w * FNN + (1 - w) * prompt, w = 0.5 for map and
  score, where the prompt side is the softmax(100 * f @ T) probability of the same tokens.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .aprilgan import LOGIT_SCALE
from .prompts import PromptSet, encode_sentences
from .sdp import text_probability

LOG = logging.getLogger(__name__)
NEUTRAL_OBJECT = "object"
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


@dataclass
class RandomWordConfig:
    pairs: int = 10_000
    words_per_prompt: tuple[int, int] = (1, 3)
    word_length: tuple[int, int] = (3, 10)
    seed: int = 0


@dataclass
class FnnTrainConfig:
    hidden: tuple[int, ...] = (512, 256, 128)
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    seed: int = 0
    words: RandomWordConfig = field(default_factory=RandomWordConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def random_word_pairs(prompt_set: PromptSet, config: RandomWordConfig) -> tuple[list[str], list[str]]:
    """`config.pairs` (normal, abnormal) sentences that differ only in their state phrase."""
    rng = np.random.default_rng(config.seed)
    normal, abnormal = [], []
    for _ in range(config.pairs):
        template = prompt_set.templates[rng.integers(len(prompt_set.templates))]
        count = rng.integers(config.words_per_prompt[0], config.words_per_prompt[1] + 1)
        words = [
            "".join(rng.choice(LETTERS, rng.integers(config.word_length[0], config.word_length[1] + 1)))
            for _ in range(count)
        ]
        slots = template.format("{}").split()
        positions = sorted(rng.integers(0, len(slots) + 1, size=count), reverse=True)
        for position, word in zip(positions, words):
            slots.insert(position, word)
        skeleton = " ".join(slots)
        for states, out in ((prompt_set.normal_states, normal), (prompt_set.abnormal_states, abnormal)):
            out.append(skeleton.format(states[rng.integers(len(states))].format(NEUTRAL_OBJECT)))
    return normal, abnormal


class FnnClassifier(nn.Module):
    """4 linear layers with ReLU between; embeddings [..., E] -> abnormal probability [...]."""

    def __init__(self, embed_dim: int, hidden: tuple[int, ...] = FnnTrainConfig.hidden) -> None:
        super().__init__()
        sizes = [embed_dim, *hidden]
        layers: list[nn.Module] = []
        for size_in, size_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(size_in, size_out), nn.ReLU()]
        self.layers = nn.Sequential(*layers, nn.Linear(sizes[-1], 2))

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(F.normalize(embeddings, dim=-1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.logits(embeddings).softmax(dim=-1)[..., 1]


def train_fnn(
    classifier: FnnClassifier,
    normal: torch.Tensor,
    abnormal: torch.Tensor,
    config: FnnTrainConfig,
    progress: bool = True,
) -> dict:
    """Train on text embeddings (label 0 normal, 1 abnormal); pairs stay together in the split.

    The weights are re-initialised from the seed first, so a seed fixes the result whatever the
    global random state was. Returns the per-epoch mean loss and the held-out accuracy.
    """
    torch.manual_seed(config.seed)
    for layer in classifier.modules():
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    generator = torch.Generator().manual_seed(config.seed)
    pairs = normal.shape[0]
    order = torch.randperm(pairs, generator=generator)
    held_out = max(1, int(round(config.validation_fraction * pairs)))
    train_x, train_y = _labelled(normal, abnormal, order[held_out:])
    val_x, val_y = _labelled(normal, abnormal, order[:held_out])
    optimizer = torch.optim.Adam(classifier.parameters(), lr=config.learning_rate)
    losses = []
    classifier.train()
    for _ in tqdm(range(config.epochs), desc="train FNN", unit="epoch", disable=not progress):
        permutation = torch.randperm(len(train_y), generator=generator)
        epoch = []
        for start in range(0, len(permutation), config.batch_size):
            index = permutation[start : start + config.batch_size]
            loss = F.cross_entropy(classifier.logits(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch.append(float(loss))
        losses.append(float(np.mean(epoch)))
    classifier.eval()
    with torch.no_grad():
        accuracy = float((classifier.logits(val_x).argmax(dim=-1) == val_y).float().mean())
    LOG.info("FNN: final loss %.4f, held-out accuracy %.3f", losses[-1], accuracy)
    return {"epoch_losses": losses, "held_out_accuracy": accuracy, "held_out_pairs": held_out}


def _labelled(normal: torch.Tensor, abnormal: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both members of the chosen pairs with labels 0 (normal) and 1 (abnormal)."""
    labels = torch.cat([torch.zeros(len(pairs)), torch.ones(len(pairs))]).long()
    return torch.cat([normal[pairs], abnormal[pairs]]), labels


def train_fnn_on_clip_text(
    classifier: FnnClassifier,
    model: nn.Module,
    tokenizer,
    prompt_set: PromptSet,
    config: FnnTrainConfig,
    progress: bool = True,
) -> dict:
    """Generate the random-word prompt pairs, encode them with CLIP's text tower, train `classifier`."""
    normal, abnormal = random_word_pairs(prompt_set, config.words)
    LOG.info("encoding %d random-word prompt pairs", len(normal))
    embeddings = [encode_sentences(model, tokenizer, sentences, progress=progress) for sentences in (normal, abnormal)]
    report = train_fnn(classifier, *embeddings, config, progress=progress)
    return {**report, "example_pair": [normal[0], abnormal[0]]}


def save_classifier(classifier: FnnClassifier, path: Path) -> None:
    """Weights as a plain .npz (readable without torch) for the reference rebuild."""
    np.savez(path, **{name: value.numpy() for name, value in classifier.state_dict().items()})


def load_classifier(classifier: FnnClassifier, path: Path) -> None:
    with np.load(path) as data:
        classifier.load_state_dict({name: torch.from_numpy(data[name]) for name in data.files})


def patch_probability_map(
    probability: torch.Tensor, patch_grid: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """Per-patch probabilities [B, N] -> bilinear (align_corners=False) map at input size [B, H, W]."""
    grid = probability.reshape(probability.shape[0], 1, *patch_grid)
    return F.interpolate(grid, size=input_size, mode="bilinear", align_corners=False)[:, 0]


class FnnScorer(nn.Module):
    """The FNN graph: (image_embedding, surgery_taps) -> (anomaly_map [B, H, W], image_score [B])."""

    def __init__(self, classifier: FnnClassifier, patch_grid: tuple[int, int], input_size: tuple[int, int]) -> None:
        super().__init__()
        self.classifier = classifier
        self.patch_grid = tuple(patch_grid)
        self.input_size = tuple(input_size)

    def forward(self, image_embedding: torch.Tensor, surgery_taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = self.classifier(surgery_taps[:, :, 1:]).mean(dim=1)  # [B, N]
        return patch_probability_map(patches, self.patch_grid, self.input_size), self.classifier(image_embedding)


class PromptProbabilityHeads(nn.Module):
    """The prompt side of the FNN method: softmax(100 * f @ T)[abnormal] of the same embeddings.

    (image_embedding, surgery_taps) -> (anomaly_map [B, H, W], image_score [B]), in [0, 1] like
    the FNN's, so that the two fuse by a weighted mean.
    """

    def __init__(self, text_features: torch.Tensor, patch_grid: tuple[int, int], input_size: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("text_features", text_features.float().clone())
        self.patch_grid = tuple(patch_grid)
        self.input_size = tuple(input_size)

    def forward(self, image_embedding: torch.Tensor, surgery_taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = F.normalize(surgery_taps[:, :, 1:], dim=-1)
        patches = (LOGIT_SCALE * tokens @ self.text_features).softmax(dim=-1)[..., 1].mean(dim=1)
        return (
            patch_probability_map(patches, self.patch_grid, self.input_size),
            text_probability(image_embedding, self.text_features),
        )
