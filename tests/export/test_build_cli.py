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
