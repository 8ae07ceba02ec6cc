"""The export-only attention rewrite is the same function with the same weights."""

import torch
from torch import nn

from zsad_edge.export.graphs.lean_attention import LeanSelfAttention, lean_attention_copy
from zsad_edge.export.models.clip import ClipSpec, ImageEncoderWithTaps, load_clip


@torch.no_grad()
def test_lean_attention_equals_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(48, 6, batch_first=True).eval()
    x = torch.randn(3, 17, 48)
    mask = torch.randn(17, 17)
    lean = LeanSelfAttention(mha)
    torch.testing.assert_close(lean(x, x, x)[0], mha(x, x, x, need_weights=False)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(
        lean(x, x, x, attn_mask=mask)[0], mha(x, x, x, need_weights=False, attn_mask=mask)[0], rtol=0, atol=1e-5
    )


@torch.no_grad()
def test_copy_is_equivalent_and_leaves_the_reference_untouched():
    clip = load_clip(ClipSpec("zsad-tiny-vit", random_init=True))
    encoder = ImageEncoderWithTaps(clip.model.visual, [2, 4]).eval()
    lean = lean_attention_copy(encoder)
    assert sum(isinstance(m, LeanSelfAttention) for m in lean.modules()) == 4
    assert sum(isinstance(m, nn.MultiheadAttention) for m in encoder.modules()) == 4
    image = torch.randn(2, 3, 224, 224)
    for got, want in zip(lean(image), encoder(image)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
