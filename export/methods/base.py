"""What every export method plug-in provides, and the defaults they share.

A method is one `MethodSpec` in runtime/contract.py (what its bundle holds, as the runtime sees
it) and one subclass of `ExportMethod` here (how to build that bundle with torch): its published
defaults, its manifest parameters, its text vectors, its modules, its uncalibrated scoring and,
where it has them, build-time steps (training) and files. Building a bundle and rebuilding its
PyTorch reference both call `assemble`, so the reference is the very module graph the ONNX came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from zsad_edge.runtime.contract import MethodSpec
from zsad_edge.runtime.errors import ModelLoadError

from ..models.aprilgan import LOGIT_SCALE, AprilGanHeads
from ..models.clip import LoadedClip

# Data-set families of CLIP-AD's settings (the --dbscan option).
DATASET_FAMILIES = ("mvtec", "visa")
DEFAULT_DATASET_FAMILY = DATASET_FAMILIES[0]


@dataclass
class MethodModules:
    """The modules to export: encoder, heads, further graphs by component name, the trainable parts."""

    encoder: nn.Module
    heads: nn.Module
    encoder_outputs: list[str]
    linear_heads: AprilGanHeads | None = None
    extra_graphs: dict[str, nn.Module] = field(default_factory=dict)


class ExportMethod:
    """Base of the export plug-ins; subclasses set `spec` and `defaults` and override what differs.

    defaults: the published setting: arch, pretrained, image_size, prompt_set, gaussian_sigma per
    data-set family, and for trained heads learning_rate and epochs.
    options: the method-specific keyword options `params` accepts (others are refused).
    uses_dataset_family: whether the data-set family (`--dbscan`) changes the method's numbers.
    """

    spec: ClassVar[MethodSpec]
    defaults: ClassVar[dict[str, Any]]
    options: ClassVar[tuple[str, ...]] = ()
    uses_dataset_family: ClassVar[bool] = False  # whether --dbscan changes its numbers (CLIP-AD's settings)

    def params(
        self, object_name: str, prompt_set: str | None, gaussian_sigma: float | None, dataset: str, **options: Any
    ) -> dict:
        """The manifest's method parameters: everything that changes the numbers, defaults filled in."""
        if dataset not in DATASET_FAMILIES:
            raise ModelLoadError(f"unknown data-set setting {dataset!r}; choose one of {', '.join(DATASET_FAMILIES)}")
        given = sorted(name for name, value in options.items() if value is not None and name not in self.options)
        if given:
            raise ModelLoadError(f"--{given[0].replace('_', '-')} does not apply to --method {self.spec.option}")
        sigma = self.defaults["gaussian_sigma"][dataset] if gaussian_sigma is None else gaussian_sigma
        return {
            "object_name": object_name,
            "prompt_set": prompt_set or self.defaults["prompt_set"],
            "logit_scale": LOGIT_SCALE,
            "gaussian_sigma": float(sigma),
        }

    def text_features(self, clip: LoadedClip, params: dict) -> torch.Tensor:
        """Class vectors T [embed_dim, 2] (column 0 normal, 1 abnormal) from the method's prompt recipe."""
        raise NotImplementedError

    def assemble(self, clip: LoadedClip, taps: list[int], text: torch.Tensor, params: dict) -> MethodModules:
        """Encoder, heads and further modules for a loaded CLIP (trained parts untrained)."""
        raise NotImplementedError

    def default_scoring(self, num_taps: int, image_threshold: float | None) -> dict:
        """Uncalibrated scoring constants from the method's theoretical map bounds."""
        raise NotImplementedError

    def prepare(self, modules: MethodModules, clip: LoadedClip, params: dict, config: Any) -> None:
        """Build-time work after assembling (training a part); records what it did in `params`."""

    def write_files(self, modules: MethodModules, staging: Path, params: dict) -> None:
        """Files beside the graphs (weights the reference needs to be rebuilt)."""

    def restore(self, modules: MethodModules, bundle_dir: Path, params: dict) -> None:
        """Load what `write_files` stored into freshly assembled modules (reference rebuild)."""

    def linear_heads(self, clip: LoadedClip, taps: list[int], text: torch.Tensor) -> AprilGanHeads:
        """One Linear(width -> embed_dim) per tap with the text vectors (APRIL-GAN's recipe), untrained."""
        return AprilGanHeads(len(taps), clip.width, clip.embed_dim, text, clip.input_size, clip.patch_grid).eval()
