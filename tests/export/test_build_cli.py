"""The build command line: commands with their own options, reachable as `zsad-edge build`, foreign options refused."""

import pytest

from zsad_edge.runtime.cli import main as zsad_edge


@pytest.mark.parametrize(
    "options, error",
    [
        (["--method", "sdp", "--sam-prompts", "box"], "error: --sam-prompts needs --sam KIND"),
        (["--method", "sdp", "--random-sam"], "error: --random-sam needs --sam KIND"),
        (["--method", "sdp", "--fnn-pairs", "100"], "error: --fnn-pairs does not apply to --method sdp"),
        (
            ["--method", "aprilgan", "--random-heads", "--clipad-mode", "clean"],
            "error: --clipad-mode does not apply to --method aprilgan",
        ),
        (
            ["--method", "sdpplus", "--random-heads", "--fusion-weight", "0.2"],
            "error: --fusion-weight does not apply to --method sdpplus",
        ),
        (
            ["--method", "aprilgan", "--random-heads", "--dbscan", "visa"],
            "error: --dbscan does not apply to --method aprilgan (it sets CLIP-AD's text clustering)",
        ),
        (
            ["--method", "sdp", "--random-heads"],
            "error: --random-heads does not apply to --method sdp: it has no trained heads",
        ),
        (
            ["--method", "aprilgan", "--heads-checkpoint", "typo.pth"],
            "error: heads checkpoint not found: typo.pth",
        ),
        (
            ["--method", "sdp", "--sam", "vit_b", "--sam-checkpoint", "typo_sam.pth"],
            "error: SAM checkpoint not found: typo_sam.pth",
        ),
    ],
)
def test_options_that_do_not_apply_are_refused(options, error, tmp_path, capsys):
    """Through `zsad-edge build` (the default command, build, left out), before any model is loaded."""
    assert (
        zsad_edge(
            [
                "build",
                *options,
                "--random-init",
                "--image-size",
                "224",
                "--arch",
                "zsad-tiny-vit",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip().splitlines()[-1] == error
    assert not (tmp_path / "b").exists()


def test_each_command_lists_only_its_options(capsys):
    from zsad_edge.export.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo_help = capsys.readouterr().out
    assert "--overwrite" in demo_help and "--method" not in demo_help and "--precision" not in demo_help
    with pytest.raises(SystemExit):
        main(["engines", "--help"])
    engines_help = capsys.readouterr().out
    assert "--max-batch" in engines_help and "--heads-checkpoint" not in engines_help


def test_a_pretrained_tag_offline_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    """Not cached and no hub: one error line naming the fix, without the hub client's minute of retries."""
    from zsad_edge.export.models import clip

    monkeypatch.setattr(clip, "_reachable", lambda host, timeout_s=5.0: False)
    code = zsad_edge(["build", "--method", "sdp", "--out", str(tmp_path / "b")])  # ViT-B-16-plus-240/laion400m_e31
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and not (tmp_path / "b").exists()
    assert "cannot be reached; on an offline machine pass a local file with --clip-checkpoint PATH" in lines[0]


def test_heads_trained_on_other_taps_are_refused(tmp_path, capsys):
    import torch

    state = {
        f"fc.{i}.{p}": torch.zeros((64, 96) if p == "weight" else (64,)) for i in range(4) for p in ("weight", "bias")
    }
    torch.save({"trainable_linearlayer": state}, tmp_path / "heads.pth")
    code = zsad_edge(["build", "--method", "aprilgan", "--heads-checkpoint", str(tmp_path / "heads.pth"),
                      "--taps", "1", "2", "3", "--random-init", "--arch", "zsad-tiny-vit", "--image-size", "224",
                      "--out", str(tmp_path / "b")])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "has heads for 4 taps, this build has 3" in error and "--taps" in error


def test_train_heads_checks_its_dataset_and_options_before_loading_a_model(tmp_path, capsys):
    base = ["build", "train-heads", "--arch", "zsad-tiny-vit", "--random-init", "--image-size", "224"]
    assert zsad_edge([*base, "--dataset", str(tmp_path / "typo"), "--out", str(tmp_path / "h.pth")]) == 2
    assert "is not a folder: give an MVTec-layout data set" in capsys.readouterr().err
    tmp_path.joinpath("set").mkdir()
    code = zsad_edge([*base, "--method", "aprilgan", "--dbscan", "visa", "--dataset", str(tmp_path / "set"),
                      "--out", str(tmp_path / "h.pth")])  # fmt: skip
    assert code == 2 and "--dbscan does not apply to --method aprilgan" in capsys.readouterr().err
