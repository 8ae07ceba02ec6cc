"""CLIP loading (tag, checkpoint, random), taps and position-embedding interpolation."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT

from zsad_edge.export.models.clip import ClipSpec, ImageEncoderWithTaps, default_taps, load_clip, validate_taps
from zsad_edge.runtime.errors import ModelLoadError

TINY = "zsad-tiny-vit"


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(ClipSpec(TINY, random_init=True))


def test_default_taps_match_published_settings():
    assert default_taps(24) == [6, 12, 18, 24]  # APRIL-GAN, ViT-L
    assert default_taps(12) == [3, 6, 9, 12]  # CLIP-AD, ViT-B
    assert default_taps(4) == [1, 2, 3, 4]


@pytest.mark.parametrize("taps", [[0, 2], [5], [2, 2], []])
def test_invalid_taps_are_refused(taps):
    with pytest.raises(ModelLoadError, match="distinct block indices in 1..4"):
        validate_taps(taps, 4)


@torch.no_grad()
def test_taps_are_raw_block_outputs_without_class_token(tiny_clip):
    """Fidelity: walk the blocks by hand and compare with the exported module's taps."""
    visual = tiny_clip.model.visual
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    embedding, taps = ImageEncoderWithTaps(visual, [2, 4])(image)
    x = visual._embeds(image)
    by_hand = []
    for block in visual.transformer.resblocks:
        x = block(x)
        by_hand.append(x[:, 1:])
    assert taps.shape == (2, 2, 196, 64)
    torch.testing.assert_close(taps[:, 0], by_hand[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(taps[:, 1], by_hand[3], rtol=0, atol=1e-5)
    torch.testing.assert_close(embedding, tiny_clip.model.encode_image(image), rtol=0, atol=1e-5)


def test_loaded_model_reports_geometry(tiny_clip):
    assert (tiny_clip.num_layers, tiny_clip.width, tiny_clip.embed_dim) == (4, 64, 32)
    assert tiny_clip.input_size == (224, 224) and tiny_clip.patch_grid == (14, 14)
    assert tiny_clip.weights_origin["kind"] == "random"


def test_checkpoint_round_trip_and_interpolated_position_embedding(tiny_clip, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    same = load_clip(ClipSpec(TINY, checkpoint=path))
    assert same.weights_origin["kind"] == "checkpoint" and len(same.weights_origin["sha256"]) == 64
    for key, value in tiny_clip.model.state_dict().items():
        torch.testing.assert_close(same.model.state_dict()[key], value, rtol=0, atol=0)
    larger = load_clip(ClipSpec(TINY, checkpoint=path, image_size=320))
    assert larger.patch_grid == (20, 20)
    assert larger.model.visual.positional_embedding.shape == (1 + 20 * 20, 64)
    # The class-token position is carried over untouched; the grid part is interpolated.
    torch.testing.assert_close(
        larger.model.visual.positional_embedding[0], tiny_clip.model.visual.positional_embedding[0]
    )


def test_weight_source_errors_are_actionable(tmp_path):
    with pytest.raises(ModelLoadError, match="exactly one CLIP weight source"):
        ClipSpec(TINY, pretrained="openai", random_init=True)
    with pytest.raises(ModelLoadError, match="CLIP checkpoint not found"):
        load_clip(ClipSpec(TINY, checkpoint=tmp_path / "missing.pt"))
    with pytest.raises(ModelLoadError, match="unknown open_clip architecture"):
        load_clip(ClipSpec("ViT-Nope", random_init=True))
    with pytest.raises(ModelLoadError, match="unknown pretrained tag"):
        load_clip(ClipSpec("ViT-B-16", pretrained="no_such_tag"))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read CLIP weights|does not fit"):
        load_clip(ClipSpec(TINY, checkpoint=tmp_path / "corrupt.pt"))


def test_wrong_architecture_checkpoint_is_named(tiny_clip, tmp_path):
    state = tiny_clip.model.state_dict()
    state["visual.proj"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match="does not fit zsad-tiny-vit"):
        load_clip(ClipSpec(TINY, checkpoint=tmp_path / "bad.pt"))


def test_offline_pretrained_tag_tells_how_to_pass_a_local_checkpoint(tmp_path):
    """The real download path runs; offline it must end in one actionable line, exit code 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "export/build_engines.py",
            "--arch",
            "ViT-B-16",
            "--pretrained",
            "laion2b_s34b_b88k",
            "--random-heads",
            "--out",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--clip-checkpoint PATH" in errors[0]
    assert not (tmp_path / "b").exists()


@pytest.fixture
def tiny_openai_tag(tmp_path, monkeypatch, tiny_clip):
    """An OpenAI-like pretrained tag for the tiny architecture, served from a local file through
    open_clip's own tag machinery, so that the tag and the checkpoint paths load the same weights."""
    import open_clip

    path = tmp_path / "tiny_openai.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY, {"openai": {"file": str(path), "quick_gelu": True}})
    return path


def _activation_layers(model) -> set[str]:
    return {type(module).__name__ for module in model.modules() if type(module).__name__ in ("GELU", "QuickGELU")}


def test_auto_activation_follows_the_official_factory(tiny_openai_tag, caplog):
    """Off the architecture's size (APRIL-GAN's 518 for a 336 model): the config's GELU, whatever the source.
    At its own size an OpenAI tag gives QuickGELU; a checkpoint keeps the config's and says how to change it."""
    for spec in (
        ClipSpec(TINY, pretrained="openai", image_size=240),
        ClipSpec(TINY, checkpoint=tiny_openai_tag, image_size=240),
    ):
        clip = load_clip(spec)
        assert clip.activation["name"] == "gelu" and "240 px is not" in clip.activation["rule"]
        assert _activation_layers(clip.model) == {"GELU"}
    tagged = load_clip(ClipSpec(TINY, pretrained="openai"))
    assert tagged.activation["name"] == "quick_gelu" and _activation_layers(tagged.model) == {"QuickGELU"}
    with caplog.at_level("WARNING"):
        checkpoint = load_clip(ClipSpec(TINY, checkpoint=tiny_openai_tag))
    assert checkpoint.activation["name"] == "gelu" and "--activation quick_gelu" in caplog.text


@torch.no_grad()
@pytest.mark.parametrize("activation", ["gelu", "quick_gelu"])
def test_each_activation_choice_gives_one_model_through_both_load_paths(tiny_openai_tag, activation):
    image = torch.randn(1, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    from_tag = load_clip(ClipSpec(TINY, pretrained="openai", image_size=240, activation=activation))
    from_file = load_clip(ClipSpec(TINY, checkpoint=tiny_openai_tag, image_size=240, activation=activation))
    assert from_tag.activation == from_file.activation == {"name": activation, "rule": "chosen with --activation"}
    expected_layer = {"gelu": "GELU", "quick_gelu": "QuickGELU"}[activation]
    assert _activation_layers(from_tag.model) == _activation_layers(from_file.model) == {expected_layer}
    torch.testing.assert_close(from_tag.model.encode_image(image), from_file.model.encode_image(image), rtol=0, atol=0)
    tokens = from_tag.tokenizer(["a photo of a weld"])
    torch.testing.assert_close(from_tag.model.encode_text(tokens), from_file.model.encode_text(tokens), rtol=0, atol=0)
    other = load_clip(
        ClipSpec(
            TINY,
            checkpoint=tiny_openai_tag,
            image_size=240,
            activation="gelu" if activation == "quick_gelu" else "quick_gelu",
        )
    )
    assert not torch.allclose(other.model.encode_image(image), from_file.model.encode_image(image), atol=1e-4)


def test_activation_is_recorded_shown_and_reused_by_the_reference(tiny_openai_tag, tmp_path, capsys):
    """An APRIL-GAN bundle from the tag at a size other than the architecture's records GELU; `zsad-edge info`
    shows it and the reference rebuilt from the manifest uses it (runtime and reference agree)."""
    import json

    import numpy as np

    from zsad_edge.export.build import BuildConfig, build_bundle, reference_from_bundle
    from zsad_edge.runtime.cli import main as cli_main
    from zsad_edge.runtime.detector import Detector

    built = build_bundle(
        BuildConfig(clip=ClipSpec(TINY, pretrained="openai", image_size=240), out_dir=tmp_path / "b", random_heads=True)
    )
    assert built.manifest.clip["activation"]["name"] == "gelu"
    assert cli_main(["info", str(built.path)]) == 0
    assert json.loads(capsys.readouterr().out)["clip"]["activation"]["name"] == "gelu"
    image = (np.random.default_rng(0).random((100, 150)) * 255).astype(np.uint8)
    got, want = Detector.from_bundle(built.path)(image), reference_from_bundle(built.path)(image)
    assert np.abs(got.anomaly_map - want.anomaly_map).max() <= 1e-4 * np.ptp(want.anomaly_map)
