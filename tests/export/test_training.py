"""Head training: losses by hand, loss decreases, checkpoints load into the export stage."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import REPO_ROOT

from zsad_edge.export.build import BuildConfig, build_bundle
from zsad_edge.export.models.aprilgan import load_head_weights
from zsad_edge.export.models.clip import ClipSpec
from zsad_edge.export.training import dice_loss, focal_loss
from zsad_edge.runtime.errors import ModelLoadError

TRAIN = [
    sys.executable,
    str(REPO_ROOT / "export" / "train_heads.py"),
    "--arch",
    "zsad-tiny-vit",
    "--random-init",
    "--image-size",
    "224",
]


def _train(*args: str) -> subprocess.CompletedProcess:
    """The train-heads command line in a subprocess, as a user runs it."""
    return subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=900)


def test_focal_and_dice_by_hand():
    p = torch.tensor([0.9, 0.2, 0.6, 0.1])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0])
    p_true = np.array([0.9, 0.8, 0.4, 0.1])
    expected_focal = np.mean(-((1 - p_true) ** 2) * np.log(p_true))
    assert float(focal_loss(p, y, 2.0)) == pytest.approx(expected_focal, rel=1e-6)
    expected_dice = 1 - (2 * (0.9 + 0.1) + 1) / (p.sum().item() + 2 + 1)
    assert float(dice_loss(p, y)) == pytest.approx(expected_dice, rel=1e-6)
    assert float(dice_loss(y, y)) == pytest.approx(0.0, abs=1e-7)


def _stripe_set(root: Path, count: int = 12):
    """Plates with a bright stripe defect and its mask: learnable even from random CLIP features."""
    rng = np.random.default_rng(0)
    for i in range(count):
        image = (np.clip(0.4 + 0.05 * rng.standard_normal((64, 64)), 0, 1) * 255).astype(np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        defect = "good" if i % 3 == 0 else "stripe"
        if defect == "stripe":
            x = rng.integers(5, 50)
            image[:, x : x + 8] = 250
            mask[:, x : x + 8] = 255
            (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "ground_truth" / defect / f"p{i}_mask.png"), mask)
        (root / "test" / defect).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "test" / defect / f"p{i}.png"), image)


def test_training_cli_lowers_the_loss_and_the_checkpoint_exports(tmp_path):
    _stripe_set(tmp_path / "stripes")
    out = tmp_path / "heads.pth"
    proc = _train("--dataset", str(tmp_path / "stripes"), "--epochs", "4", "--batch-size", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    losses = torch.load(out, weights_only=True)["zsad_edge"]["epoch_losses"]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0]
    built = build_bundle(
        BuildConfig(
            clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224),
            out_dir=tmp_path / "bundle",
            heads_checkpoint=out,
        )
    )
    assert built.manifest.method["params"]["heads"]["kind"] == "checkpoint"
    trained_weight = torch.load(out, weights_only=True)["trainable_linearlayer"]["fc.0.weight"]
    torch.testing.assert_close(built.heads.fc[0].weight, trained_weight)
    load_head_weights(built.heads, out)  # the official loader accepts our checkpoint


def test_training_on_battery_weld_ci_sized(battery_weld, tmp_path):
    out = tmp_path / "weld.pth"
    proc = _train("--dataset", str(battery_weld), "--max-images", "24", "--epochs", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "training on 24 image(s)" in proc.stdout
    losses = torch.load(out, weights_only=True)["zsad_edge"]["epoch_losses"]
    assert losses[-1] < losses[0]


def test_dataset_without_masks_is_refused(tmp_path):
    (tmp_path / "d" / "test" / "broken").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "d" / "test" / "broken" / "x.png"), np.zeros((20, 20), np.uint8))
    proc = _train("--dataset", str(tmp_path / "d"), "--out", str(tmp_path / "h.pth"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no image with a usable mask")
    assert not (tmp_path / "h.pth").exists()


def test_sdpplus_training_uses_its_schedule_and_exports(tmp_path):
    _stripe_set(tmp_path / "stripes")
    out = tmp_path / "sdpplus.pth"
    proc = _train(
        "--method",
        "sdpplus",
        "--dataset",
        str(tmp_path / "stripes"),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    meta = torch.load(out, weights_only=True)["zsad_edge"]
    assert meta["method"] == "sdpplus" and meta["learning_rate"] == 1e-4 and meta["text"]["dbscan"]["eps"] == 0.5
    assert meta["epoch_losses"][-1] < meta["epoch_losses"][0]
    built = build_bundle(
        BuildConfig(
            clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224),
            method="sdpplus",
            out_dir=tmp_path / "bundle",
            heads_checkpoint=out,
        )
    )
    trained_weight = torch.load(out, weights_only=True)["trainable_linearlayer"]["fc.0.weight"]
    torch.testing.assert_close(built.heads.linear_heads.fc[0].weight, trained_weight)
    assert meta["text"]["clipad_mode"] == "official" and meta["activation"]["name"] == "gelu"


@torch.no_grad()
def test_sdpplus_training_reads_the_taps_of_its_clipad_mode(tmp_path):
    """Heads learn on the tokens the bundle will give them: the official mode's aliased taps."""
    from zsad_edge.export.methods import export_method
    from zsad_edge.export.models.clip import load_clip
    from zsad_edge.export.models.sdp import SurgeryEncoder

    clip = load_clip(ClipSpec("zsad-tiny-vit", random_init=True, image_size=224))
    text = torch.nn.functional.normalize(torch.randn(32, 2), dim=0)
    image = torch.randn(1, 3, 224, 224)
    for mode in ("official", "clean"):
        method = export_method("sdpplus")
        modules = method.assemble(clip, [1, 2, 3, 4], text, method.params("x", None, None, "mvtec", clipad_mode=mode))
        want = SurgeryEncoder(clip.model.visual, [1, 2, 3, 4], patch_taps=True, clipad_mode=mode)(image)[-1]
        torch.testing.assert_close(modules.encoder(image)[-1], want, rtol=0, atol=0)


def test_heads_trained_in_another_mode_are_refused_with_the_flag_to_use(tmp_path):
    _stripe_set(tmp_path / "stripes", count=6)
    out = tmp_path / "clean.pth"
    proc = _train(
        "--method",
        "sdpplus",
        "--clipad-mode",
        "clean",
        "--dataset",
        str(tmp_path / "stripes"),
        "--epochs",
        "1",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    config = dict(
        clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224), method="sdpplus", heads_checkpoint=out
    )
    with pytest.raises(
        ModelLoadError,
        match="trained with clipad_mode 'clean', this build uses 'official': build with --clipad-mode clean",
    ):
        build_bundle(BuildConfig(out_dir=tmp_path / "official", **config))
    built = build_bundle(BuildConfig(out_dir=tmp_path / "clean", clipad_mode="clean", **config))
    assert built.manifest.method["params"]["clipad_mode"] == "clean"
