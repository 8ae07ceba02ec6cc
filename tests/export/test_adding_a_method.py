"""README's "Adding a method", followed for a tiny test-only method: a MethodSpec and one plug-in
class, nothing else; the build CLI, the runtime and the reference take it as they are."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import relative_map_error
from torch import nn

from zsad_edge.export.build import reference_from_bundle
from zsad_edge.export.cli import main as build_main
from zsad_edge.export.methods import EXPORT_METHODS, ExportMethod, MethodModules, register
from zsad_edge.export.models.clip import ImageEncoderWithTaps
from zsad_edge.runtime.contract import HEADS, IMAGE_EMBEDDING, IMAGE_ENCODER, METHODS, TAPS, MethodSpec
from zsad_edge.runtime.detector import Detector

TOKEN_NORM = MethodSpec(
    "token_norm", "token-norm", (IMAGE_ENCODER, HEADS), (IMAGE_EMBEDDING, TAPS), score_rule="prompt"
)


class TokenNormHeads(nn.Module):
    """Map: the norm of each patch token of the last tap, bilinear to the input size; score: its peak."""

    def __init__(self, grid: tuple[int, int], size: tuple[int, int]) -> None:
        super().__init__()
        self.grid, self.size = tuple(grid), tuple(size)

    def forward(self, image_embedding: torch.Tensor, taps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        norms = taps[:, -1].norm(dim=-1).reshape(-1, 1, *self.grid)
        anomaly_map = F.interpolate(norms, size=self.size, mode="bilinear", align_corners=False)[:, 0]
        return anomaly_map, anomaly_map.amax(dim=(1, 2))


class TokenNorm(ExportMethod):
    spec = TOKEN_NORM
    defaults = {
        "arch": "zsad-tiny-vit",
        "pretrained": None,
        "image_size": 224,
        "prompt_set": "aprilgan",
        "gaussian_sigma": {"mvtec": 0.0, "visa": 0.0},
    }

    def text_features(self, clip, params):
        return torch.zeros(clip.embed_dim, 2)

    def assemble(self, clip, taps, text, params):
        heads = TokenNormHeads(clip.patch_grid, clip.input_size).eval()
        return MethodModules(
            ImageEncoderWithTaps(clip.model.visual, taps).eval(), heads, list(self.spec.encoder_outputs)
        )

    def default_scoring(self, num_taps, image_threshold):
        return {
            "rule": self.spec.score_rule,
            "map_threshold": 8.0,
            "map_max": 16.0,
            "image_threshold": 8.0,
            "calibrated": False,
        }


@pytest.fixture
def token_norm(monkeypatch):
    """Step 1 (the spec) and step 2 (the registered plug-in), undone after the test."""
    monkeypatch.setitem(METHODS, TOKEN_NORM.name, TOKEN_NORM)
    monkeypatch.setitem(EXPORT_METHODS, TOKEN_NORM.option, None)  # so that teardown removes the registration
    register(TokenNorm)


def test_a_new_method_builds_and_runs_without_other_changes(token_norm, tmp_path, capsys):
    bundle = tmp_path / "token_norm"
    assert build_main(["--method", "token-norm", "--random-init", "--out", str(bundle)]) == 0, capsys.readouterr().err
    detector = Detector.from_bundle(bundle)
    assert detector.manifest.method["name"] == "token_norm"
    images = [(np.random.default_rng(i).random((60, 90)) * 255).astype(np.uint8) for i in range(2)]
    reference = reference_from_bundle(bundle)
    for got, want in zip(detector.detect_batch(images), reference.detect_batch(images)):
        assert got.anomaly_map.shape == (60, 90)
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4
        assert abs(got.score - want.score) <= 1e-4 * max(abs(want.score), 1.0)
    assert (
        build_main(["--method", "token-norm", "--random-init", "--fusion-weight", "0.3", "--out", str(tmp_path / "x")])
        == 2
    )
    assert "--fusion-weight does not apply to --method token-norm" in capsys.readouterr().err
