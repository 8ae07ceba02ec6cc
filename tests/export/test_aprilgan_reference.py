"""APRIL-GAN reference fidelity: hand-computed formula, prompts, official checkpoint format."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsad_edge.export.models.aprilgan import OFFICIAL_CHECKPOINT_KEY, AprilGanHeads, load_head_weights
from zsad_edge.export.models.prompts import PromptSet, class_text_features, encode_sentences
from zsad_edge.runtime.errors import ModelLoadError


def _bilinear_align_corners(grid: np.ndarray, size: int) -> np.ndarray:
    """Upsample a square grid by explicit align_corners=True bilinear sampling, pixel by pixel."""
    g = grid.shape[0]
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            y, x = i * (g - 1) / (size - 1), j * (g - 1) / (size - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, g - 1), min(x0 + 1, g - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (
                grid[y0, x0] * (1 - dy) * (1 - dx)
                + grid[y0, x1] * (1 - dy) * dx
                + grid[y1, x0] * dy * (1 - dx)
                + grid[y1, x1] * dy * dx
            )
    return out


def test_map_and_score_match_the_formula_computed_by_hand():
    rng = np.random.default_rng(0)
    width, embed, grid, size, n_taps = 5, 3, 2, 5, 2
    text = rng.normal(size=(embed, 2))
    text /= np.linalg.norm(text, axis=0)
    heads = AprilGanHeads(n_taps, width, embed, torch.tensor(text, dtype=torch.float32), (size, size), (grid, grid))
    taps = rng.normal(size=(1, n_taps, grid * grid, width)).astype(np.float32)
    embedding = rng.normal(size=(1, embed)).astype(np.float32)
    anomaly_map, score = heads(torch.from_numpy(embedding), torch.from_numpy(taps))

    expected = np.zeros((size, size))
    for t, linear in enumerate(heads.fc):
        w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
        tokens = taps[0, t] @ w.T + b
        tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
        logits = 100.0 * tokens @ text  # [N, 2]
        up = [_bilinear_align_corners(logits[:, c].reshape(grid, grid), size) for c in range(2)]
        expected += np.exp(up[1]) / (np.exp(up[0]) + np.exp(up[1]))
    image = embedding[0] / np.linalg.norm(embedding[0])
    image_logits = 100.0 * image @ text
    expected_score = np.exp(image_logits[1]) / np.exp(image_logits).sum()

    np.testing.assert_allclose(anomaly_map[0].detach().numpy(), expected, atol=2e-5)
    np.testing.assert_allclose(float(score[0]), expected_score, atol=1e-6)


def test_sigmoid_form_equals_per_tap_softmax_on_real_sizes():
    """The cheap form used in the graph equals the published per-tap softmax at 37x37 -> 518.

    Tolerance 1e-4 on a map of range 0..4: float32 rounding of 100x-scaled logits summed in a
    different order (matrix upsampling vs F.interpolate), far inside the 1e-4-of-range budget.
    """
    torch.manual_seed(0)
    text = F.normalize(torch.randn(16, 2), dim=0)
    heads = AprilGanHeads(4, 24, 16, text, (518, 518), (37, 37))
    taps = torch.randn(2, 4, 37 * 37, 24)
    with torch.no_grad():
        anomaly_map, _ = heads(torch.randn(2, 16), taps)
        direct = 0
        for t, linear in enumerate(heads.fc):
            logits = 100 * F.normalize(linear(taps[:, t]), dim=-1) @ text
            logits = logits.permute(0, 2, 1).reshape(2, 2, 37, 37)
            direct = direct + F.interpolate(logits, (518, 518), mode="bilinear", align_corners=True).softmax(1)[:, 1]
    torch.testing.assert_close(anomaly_map, direct, rtol=0, atol=1e-4)


def test_prompt_ensemble_size_and_class_vectors():
    prompts = PromptSet.load("aprilgan")
    normal, abnormal = prompts.sentences("battery weld")
    assert (len(prompts.templates), len(normal), len(abnormal)) == (35, 7 * 35, 5 * 35)
    assert "a photo of the flawless battery weld." in normal
    assert "a photo of a battery weld with defect." in abnormal

    import open_clip

    from zsad_edge.export.models.clip import ClipSpec, load_clip

    clip = load_clip(ClipSpec("zsad-tiny-vit", random_init=True))
    text = class_text_features(clip.model, clip.tokenizer, prompts, "battery weld")
    assert text.shape == (32, 2)
    torch.testing.assert_close(text.norm(dim=0), torch.ones(2))
    by_hand = F.normalize(encode_sentences(clip.model, clip.tokenizer, abnormal).mean(0), dim=0)
    torch.testing.assert_close(text[:, 1], by_hand)
    assert isinstance(clip.tokenizer, open_clip.tokenizer.SimpleTokenizer)


def _heads(n_taps=4):
    return AprilGanHeads(n_taps, 8, 4, F.normalize(torch.randn(4, 2), dim=0), (16, 16), (2, 2))


def test_official_checkpoint_format_loads(tmp_path):
    source = _heads()
    torch.save(
        {OFFICIAL_CHECKPOINT_KEY: {k: v for k, v in source.state_dict().items() if k.startswith("fc.")}},
        tmp_path / "official.pth",
    )
    target = _heads()
    digest = load_head_weights(target, tmp_path / "official.pth")
    assert len(digest) == 64
    for index in range(4):
        torch.testing.assert_close(target.fc[index].weight, source.fc[index].weight)


def test_bad_head_checkpoints_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_head_weights(_heads(), tmp_path / "none.pth")
    torch.save({OFFICIAL_CHECKPOINT_KEY: _heads(2).state_dict()}, tmp_path / "two.pth")
    with pytest.raises(ModelLoadError, match="has heads for 2 taps, this build has 4"):
        load_head_weights(_heads(4), tmp_path / "two.pth")
    wide = AprilGanHeads(4, 9, 4, F.normalize(torch.randn(4, 2), dim=0), (16, 16), (2, 2))
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_head_weights(_heads(4), tmp_path / "wide.pth")
