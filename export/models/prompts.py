"""Prompt ensembles and their CLIP text embeddings, computed once at export time.

The runtime never runs a text encoder: the class vectors are stored in the bundle as .npy and
baked into the head graphs as constants. Prompt sets are data (prompt_sets/*.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

PROMPT_SET_DIR = Path(__file__).parent / "prompt_sets"


@dataclass(frozen=True)
class PromptSet:
    """State phrases (with '{}' for the object) crossed with sentence templates (with '{}' for the state)."""

    normal_states: tuple[str, ...]
    abnormal_states: tuple[str, ...]
    templates: tuple[str, ...]

    @classmethod
    def load(cls, name: str) -> "PromptSet":
        data = json.loads((PROMPT_SET_DIR / f"{name}.json").read_text(encoding="utf-8"))
        return cls(tuple(data["normal_states"]), tuple(data["abnormal_states"]), tuple(data["templates"]))

    def sentences(self, object_name: str) -> tuple[list[str], list[str]]:
        """All normal and all abnormal sentences for one object name."""

        def expand(states: tuple[str, ...]) -> list[str]:
            return [template.format(state.format(object_name)) for state in states for template in self.templates]

        return expand(self.normal_states), expand(self.abnormal_states)


@torch.no_grad()
def encode_sentences(
    model: nn.Module, tokenizer, sentences: list[str], batch_size: int = 64, progress: bool = False
) -> torch.Tensor:
    """L2-normalised CLIP text embeddings [len(sentences), embed_dim]."""
    starts = tqdm(range(0, len(sentences), batch_size), desc="encode text", unit="batch", disable=not progress)
    chunks = [model.encode_text(tokenizer(sentences[start : start + batch_size])) for start in starts]
    return F.normalize(torch.cat(chunks).float(), dim=-1)


def class_text_features(model: nn.Module, tokenizer, prompt_set: PromptSet, object_name: str) -> torch.Tensor:
    """APRIL-GAN class vectors T [embed_dim, 2]: column 0 normal, 1 abnormal.

    Each prompt embedding is normalised, averaged per class and the mean re-normalised.
    """
    columns = [
        F.normalize(encode_sentences(model, tokenizer, sentences).mean(dim=0), dim=0)
        for sentences in prompt_set.sentences(object_name)
    ]
    return torch.stack(columns, dim=1)
