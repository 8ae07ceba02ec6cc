"""CLIP-AD SDP reference fidelity: every formula against a hand computation on small inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zsad_edge.export.models.clip import ClipSpec, load_clip
from zsad_edge.export.models.prompts import PromptSet
from zsad_edge.export.models.sdp import (
    SurgeryEncoder,
    feature_surgery_map,
    representative_vector,
    text_probability,
    vv_attention,
)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@torch.no_grad()
def test_vv_attention_by_hand():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(1, 5, 8)
    w, b = attention.in_proj_weight.numpy(), attention.in_proj_bias.numpy()
    value = x[0].numpy() @ w[16:].T + b[16:]
    heads = []
    for h in range(2):
        v = value[:, 4 * h : 4 * h + 4]
        heads.append(_softmax(v @ v.T / 2.0) @ v)
    expected = np.concatenate(heads, axis=1) @ attention.out_proj.weight.numpy().T + attention.out_proj.bias.numpy()
    np.testing.assert_allclose(vv_attention(attention, x)[0].numpy(), expected, atol=1e-5)


@pytest.fixture(scope="module")
def two_block_visual():
    visual = load_clip(ClipSpec("zsad-tiny-vit", random_init=True)).model.visual
    visual.transformer.resblocks = visual.transformer.resblocks[:2]
    return visual.eval()


@torch.no_grad()
@pytest.mark.parametrize("taps, restarts", [([2], False), ([1, 2], True)])
def test_staged_surgery_stream_on_a_two_block_model(two_block_visual, taps, restarts):
    """One stage: x_s = vv(block 0) + vv(block 1). Two stages: x_s restarts, = vv(block 1) at tap 2."""
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    embedding, surgery, original = SurgeryEncoder(two_block_visual, taps, patch_taps=True)(image)
    blocks = two_block_visual.transformer.resblocks
    x0 = two_block_visual._embeds(image)
    x1 = blocks[0](x0)
    x2 = blocks[1](x1)
    out0, out1 = vv_attention(blocks[0].attn, blocks[0].ln_1(x0)), vv_attention(blocks[1].attn, blocks[1].ln_1(x1))
    stream = out1 if restarts else out0 + out1
    expected = two_block_visual.ln_post(torch.cat([x2[:, :1], stream[:, 1:]], dim=1)) @ two_block_visual.proj
    torch.testing.assert_close(surgery[:, -1], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(original[:, -1], x2[:, 1:], rtol=0, atol=1e-5)
    torch.testing.assert_close(embedding, two_block_visual(image), rtol=0, atol=1e-5)  # original path unchanged
    assert surgery.shape == (2, len(taps), 197, 32) and original.shape == (2, len(taps), 196, 64)


@torch.no_grad()
def _official_clipad_loop(visual, taps, image):
    """CLIP-AD's transformer loop as published, in-place adds included, on open_clip's own blocks.

    Its stored tap tensors are the very tensors the next block adds to in place, so the aliasing
    is reproduced by Python's own semantics here, not by a formula.
    """
    blocks = visual.transformer.resblocks
    stored, state = [], None
    x = visual._embeds(image)
    for count, block in enumerate(blocks):
        if state is None:  # start of the dual path
            normed = block.ln_1(x)
            x_ori = x + block.attention(q_x=normed)
            state = [vv_attention(block.attn, normed), x_ori + block.mlp(block.ln_2(x_ori))]
        else:
            surgery, x_ori = state
            normed = block.ln_1(x_ori)
            surgery_res, x_ori_res = vv_attention(block.attn, normed), block.attention(q_x=normed)
            if count % (len(blocks) / 4) == 0:
                surgery = surgery_res
            else:
                surgery += surgery_res
            x_ori += x_ori_res  # in place: the previous tap's stored tensor changes too
            state = [surgery, x_ori + block.mlp(block.ln_2(x_ori))]
        if count + 1 in taps:
            stored.append(state)
    surgery_taps, original_taps = [], []
    for surgery, x_ori in stored:
        surgery = surgery.clone()
        surgery[:, 0] = x_ori[:, 0]
        surgery_taps.append(visual.ln_post(surgery) @ visual.proj)
        original_taps.append(x_ori[:, 1:])
    return torch.stack(surgery_taps, dim=1), torch.stack(original_taps, dim=1)


@torch.no_grad()
def test_official_mode_reproduces_clipad_in_place_tap_aliasing():
    """Taps every n_blocks / 4 blocks (the published pattern): official mode equals the published loop,
    taps before the last block differ from the clean block outputs, the last tap does not."""
    visual = load_clip(ClipSpec("zsad-tiny-vit", random_init=True, seed=5)).model.visual.eval()
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    taps = [1, 2, 3, 4]
    want_surgery, want_original = _official_clipad_loop(visual, taps, image)
    _, surgery, original = SurgeryEncoder(visual, taps, patch_taps=True, clipad_mode="official")(image)
    torch.testing.assert_close(surgery, want_surgery, rtol=0, atol=1e-5)
    torch.testing.assert_close(original, want_original, rtol=0, atol=1e-5)
    _, clean_surgery, clean_original = SurgeryEncoder(visual, taps, patch_taps=True, clipad_mode="clean")(image)
    for tap in range(3):
        change = (original[:, tap] - clean_original[:, tap]).abs().max() / clean_original[:, tap].abs().max()
        assert change > 0.05  # one attention residual more
        assert (surgery[:, tap, 0] - clean_surgery[:, tap, 0]).abs().max() > 1e-3  # the CLS it copies
        torch.testing.assert_close(surgery[:, tap, 1:], clean_surgery[:, tap, 1:])  # the v-v stream itself
    torch.testing.assert_close(original[:, 3], clean_original[:, 3])
    torch.testing.assert_close(surgery[:, 3], clean_surgery[:, 3])


def test_official_text_vectors_are_rounded_and_normalised_in_float16():
    """As CLIP-AD does: the cluster mean becomes float16, then is divided by its float16 norm."""
    rng = np.random.default_rng(1)
    embeddings = torch.tensor(
        np.array([1.0, 0.2, -0.3, 0.1]) + 0.01 * rng.standard_normal((30, 4)), dtype=torch.float32
    )
    mean = F.normalize(embeddings, dim=-1).mean(0).numpy()
    official = torch.tensor(mean, dtype=torch.float16)
    official /= official.norm()
    got = representative_vector(embeddings, eps=0.5, min_samples=15, round_to_fp16=True)
    assert got.dtype == torch.float32 and torch.equal(got, official.float())
    clean = representative_vector(embeddings, eps=0.5, min_samples=15)
    assert 0 < (got - clean).abs().max() < 1e-3


def test_feature_surgery_by_hand():
    rng = np.random.default_rng(0)
    taps = rng.standard_normal((1, 2, 1 + 4, 6)).astype(np.float32)  # 2 taps, CLS + 2x2 grid
    text = rng.standard_normal((6, 2)).astype(np.float32)
    text /= np.linalg.norm(text, axis=0)
    total = np.zeros((4, 2))
    for t in range(2):
        f = taps[0, t] / np.linalg.norm(taps[0, t], axis=1, keepdims=True)
        sim = f @ text
        p = _softmax(sim[0])
        weighted = sim * (p / p.mean())
        total += (weighted - weighted.mean(axis=1, keepdims=True))[1:]
    grid = total[:, 1].reshape(2, 2)
    got = feature_surgery_map(torch.from_numpy(taps), torch.from_numpy(text), (2, 2), (2, 2))
    np.testing.assert_allclose(got[0].numpy(), grid, atol=1e-5)  # same size: interpolation is the identity
    up = feature_surgery_map(torch.from_numpy(taps), torch.from_numpy(text), (2, 2), (4, 4))[0].numpy()
    # align_corners=False doubling: corners copy the grid values, inner pixels mix 3:1
    assert up[0, 0] == pytest.approx(grid[0, 0], abs=1e-5)
    assert up[0, 1] == pytest.approx(0.75 * grid[0, 0] + 0.25 * grid[0, 1], abs=1e-5)


def test_representative_vector_is_the_largest_cluster_mean():
    rng = np.random.default_rng(0)
    centre = np.array([1.0, 0, 0, 0])
    cluster = centre + 0.01 * rng.standard_normal((20, 4))
    outliers = np.eye(4)[1:] * 1.0
    embeddings = torch.tensor(np.vstack([cluster, outliers]), dtype=torch.float32)
    expected = F.normalize(F.normalize(embeddings[:20], dim=-1).mean(0), dim=0)
    torch.testing.assert_close(representative_vector(embeddings, eps=0.5, min_samples=15), expected)
    everything = F.normalize(F.normalize(embeddings, dim=-1).mean(0), dim=0)  # all noise -> plain mean
    torch.testing.assert_close(representative_vector(embeddings, eps=1e-6, min_samples=15), everything)


def test_text_probability_and_prompt_counts():
    text = torch.eye(2)
    assert float(text_probability(torch.tensor([[0.0, 1.0]]), text)[0]) == pytest.approx(1.0)
    normal, abnormal = PromptSet.load("clipad").sentences("weld")
    assert (len(normal), len(abnormal)) == (9 * 22, 10 * 22)
    assert "a photo of a weld with crack for visual inspection." in abnormal
    # The official template order (state-major, as CLIP-AD's prompt_ensemble expands them)
    assert normal[12:18] == [f"a photo of {a} flawless weld." for a in ("the", "a")] + [
        "a photo of a large flawless weld.",
        "a photo of the small flawless weld.",
        "a photo of the large flawless weld.",
        "a photo of a small flawless weld.",
    ]


@torch.no_grad()
def test_sdpplus_map_is_the_sdp_map_plus_the_linear_head_maps():
    """SDP+ = feature-surgery map + sum over taps of the APRIL-GAN head maps (both checked by hand elsewhere)."""
    from zsad_edge.export.models.aprilgan import AprilGanHeads, randomize_heads
    from zsad_edge.export.models.sdp import SdpHeads

    text = F.normalize(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), dim=0)
    linear = AprilGanHeads(2, 8, 6, text, (4, 4), (2, 2))
    randomize_heads(linear, seed=3)
    surgery, taps = torch.randn(1, 2, 5, 6), torch.randn(1, 2, 4, 8)
    embedding = torch.randn(1, 6)
    plain_map, plain_score = SdpHeads(text, (2, 2), (4, 4))(embedding, surgery)
    plus_map, plus_score = SdpHeads(text, (2, 2), (4, 4), linear)(embedding, surgery, taps)
    expected = feature_surgery_map(surgery, text, (2, 2), (4, 4)) + linear.tap_probabilities(taps).sum(dim=1)
    torch.testing.assert_close(plus_map, expected)
    torch.testing.assert_close(plain_map, feature_surgery_map(surgery, text, (2, 2), (4, 4)))
    torch.testing.assert_close(plus_score, plain_score)
    torch.testing.assert_close(plain_score, text_probability(embedding, text))
