"""Both command lines end to end, in subprocesses as a user runs them."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT

from zsad_edge.runtime.backends.openvino import openvino_available


def _run(args, cwd=REPO_ROOT, env=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def _zsad(*args):
    return _run([sys.executable, "-m", "zsad_edge.runtime.cli", *map(str, args)])


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.torch_side
def test_demo_builds_and_detects_offline(tmp_path):
    proc = _run(
        [sys.executable, str(REPO_ROOT / "export" / "build_engines.py"), "demo", "--out", str(tmp_path / "demo")],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo" / "manifest.json").is_file()
    result = json.loads((tmp_path / "demo_output" / "synthetic_part.json").read_text())
    assert 0.0 <= result["score"] <= 1.0 and (result["height"], result["width"]) == (256, 400)
    overlay = cv2.imread(str(tmp_path / "demo_output" / "synthetic_part_overlay.png"))
    # drawn enlarged to 640 px wide (the text must be readable), below a three-row header
    assert overlay.shape[1:] == (640, 3) and 410 + 60 < overlay.shape[0] < 410 + 160
    manifest = (tmp_path / "demo" / "manifest.json").read_bytes()
    again = _run(
        [sys.executable, str(REPO_ROOT / "export" / "build_engines.py"), "demo", "--out", str(tmp_path / "demo")],
        cwd=tmp_path,
    )
    assert again.returncode == 2 and _error_lines(again.stderr) == [
        f"error: output folder exists: {tmp_path / 'demo'} (pass --overwrite to replace it)"
    ]
    assert (tmp_path / "demo" / "manifest.json").read_bytes() == manifest


def test_folder_run_continues_past_bad_images(tiny_built, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    cv2.imwrite(str(images / "1-+_row0.png"), (np.random.default_rng(0).random((64, 100)) * 255).astype(np.uint8))
    cv2.imwrite(str(images / "rgb.jpg"), np.zeros((30, 30, 3), np.uint8))
    (images / "corrupt.png").write_bytes(b"garbage")
    (images / "empty.png").write_bytes(b"")
    proc = _zsad("detect", tiny_built.path, images, "--out", tmp_path / "out", "--batch-size", "2")
    assert proc.returncode == 1
    assert "2 image(s) scored" in proc.stdout and "2 skipped" in proc.stdout
    assert "cannot decode image (corrupt or not an image)" in proc.stdout and "image file is empty" in proc.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["results"]) == 2 and len(summary["failures"]) == 2
    auto = "OpenVINO CPU (f32)" if openvino_available() else "CPUExecutionProvider"  # `auto` on a CPU
    assert summary["run"]["providers"] == [auto]
    assert summary["run"]["backend"] == ("openvino" if openvino_available() else "cpu")  # what ran, not "auto"
    assert "random weights: for tests and timing only" in proc.stderr
    per_image = json.loads((tmp_path / "out" / "1-+_row0.json").read_text())
    assert per_image["width"] == 100 and per_image["height"] == 64
    assert (tmp_path / "out" / "rgb_overlay.png").is_file()


def test_single_corrupt_image_is_one_error_line(tiny_built, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    proc = _zsad("detect", tiny_built.path, tmp_path / "bad.png", "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == [
        f"error: no image could be read: cannot decode image (corrupt or not an image): {tmp_path / 'bad.png'}"
    ]
    assert "Traceback" not in proc.stderr


def test_bad_bundles_give_one_error_line(tiny_built, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((20, 20), np.uint8))
    proc = _zsad("detect", tmp_path / "no_bundle", image, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "bundle folder not found" in _error_lines(proc.stderr)[0]

    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_built.path, tampered)
    with open(tampered / "heads.onnx", "ab") as handle:
        handle.write(b"\0")
    proc = _zsad("detect", tampered, image, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "heads.onnx does not match its manifest sha256" in _error_lines(proc.stderr)[0]

    newer = tmp_path / "newer"
    shutil.copytree(tiny_built.path, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["schema_version"] += 1
    (newer / "manifest.json").write_text(json.dumps(manifest))
    proc = _zsad("detect", newer, image, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "newer than this runtime supports" in _error_lines(proc.stderr)[0]


@pytest.mark.torch_side
def test_build_errors_are_one_line(tmp_path):
    build = [sys.executable, str(REPO_ROOT / "export" / "build_engines.py"), "--arch", "zsad-tiny-vit"]
    proc = _run(
        [*build, "--clip-checkpoint", str(tmp_path / "missing.pt"), "--random-heads", "--out", str(tmp_path / "b")]
    )
    assert proc.returncode == 2 and _error_lines(proc.stderr) == [
        f"error: CLIP checkpoint not found: {tmp_path / 'missing.pt'}"
    ]
    proc = _run([*build, "--random-init", "--out", str(tmp_path / "b")])
    assert proc.returncode == 2 and "--heads-checkpoint PATH" in _error_lines(proc.stderr)[0]
    assert not (tmp_path / "b").exists()


def test_info_prints_the_manifest_summary(tiny_built):
    proc = _zsad("info", tiny_built.path)
    assert proc.returncode == 0
    info = json.loads(proc.stdout)
    assert info["method"] == "aprilgan_zero_shot" and info["taps"] == [1, 2, 3, 4]
    assert info["preprocess"]["interpolation"] == "pil_bicubic" and info["preprocess"]["input_size"] == [224, 224]
    assert info["clip"]["activation"]["name"] == "gelu" and info["clipad_mode"] is None
    assert info["precisions"] == {"fp32": "as exported"}


def test_few_shot_cli_fit_calibrate_detect(tiny_built, tmp_path):
    normals = _write_normals(tmp_path / "normals", 3)
    bank = tmp_path / "bank.npz"
    proc = _zsad("fit-normal", tiny_built.path, normals, "--shots", "2", "--out", bank)
    assert proc.returncode == 0 and "memory bank of 2 shot(s)" in proc.stdout
    proc = _zsad("calibrate", tiny_built.path, normals, "--memory-bank", bank)
    assert proc.returncode == 0 and f"written to {bank}" in proc.stdout
    proc = _zsad("detect", tiny_built.path, normals, "--memory-bank", bank, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "0 flagged anomalous" in proc.stdout  # calibrated on these very images: none above threshold


def _write_normals(folder, count, seed=3, shape=(50, 70)):
    rng = np.random.default_rng(seed)
    folder.mkdir()
    for i in range(count):
        image = np.clip(0.5 + 0.1 * rng.standard_normal(shape), 0, 1)
        cv2.imwrite(str(folder / f"n{i}.png"), (image * 255).astype(np.uint8))
    return folder


@pytest.mark.torch_side
def test_sdp_cli_build_calibrate_detect(tmp_path):
    build = [
        sys.executable,
        str(REPO_ROOT / "export" / "build_engines.py"),
        "--method",
        "sdp",
        "--arch",
        "zsad-tiny-vit",
        "--random-init",
        "--image-size",
        "224",
        "--gaussian-sigma",
        "4",
    ]
    proc = _run([*build, "--heads-checkpoint", str(tmp_path / "h.pth"), "--out", str(tmp_path / "x")])
    assert (
        proc.returncode == 2 and "sdp is training-free and takes no --heads-checkpoint" in _error_lines(proc.stderr)[0]
    )
    proc = _run([*build, "--out", str(tmp_path / "sdp")])
    assert proc.returncode == 0, proc.stderr
    normals = _write_normals(tmp_path / "normals", 3)
    assert _zsad("calibrate", tmp_path / "sdp", normals).returncode == 0
    proc = _zsad("detect", tmp_path / "sdp", normals, "--out", tmp_path / "out")
    assert proc.returncode == 0 and "3 image(s) scored, 0 flagged anomalous" in proc.stdout
    result = json.loads((tmp_path / "out" / "n0.json").read_text())
    assert result["score"] <= 2.0 and {"text_score", "map_peak"} <= set(result)
    proc = _zsad("fit-normal", tmp_path / "sdp", normals, "--out", tmp_path / "bank.npz")
    assert proc.returncode == 2 and "few-shot memory banks work with aprilgan_zero_shot" in _error_lines(proc.stderr)[0]


@pytest.mark.torch_side
def test_fnn_cli_build_trains_with_a_progress_bar(tmp_path):
    proc = _run(
        [
            sys.executable,
            str(REPO_ROOT / "export" / "build_engines.py"),
            "--method",
            "fnn",
            "--arch",
            "zsad-tiny-vit",
            "--random-init",
            "--image-size",
            "224",
            "--fnn-pairs",
            "100",
            "--fnn-epochs",
            "2",
            "--out",
            str(tmp_path / "fnn"),
        ]
    )
    assert proc.returncode == 0, proc.stderr
    assert "train FNN" in proc.stderr and "encode text" in proc.stderr  # tqdm progress bars
    info = json.loads(_zsad("info", tmp_path / "fnn").stdout)
    assert info["method"] == "fnn" and set(info["components"]) == {"image_encoder", "heads", "fnn"}


def test_version_and_help_show_what_a_user_needs():
    version = _zsad("--version")
    assert version.returncode == 0 and version.stdout.startswith("zsad-edge ") and "." in version.stdout
    detect = _zsad("detect", "--help").stdout
    assert "(default: auto)" in detect and "(default: fp32)" in detect and "(default: 1)" in detect
    assert "(default: None)" not in detect and "(default: False)" not in detect


def test_a_bad_thread_count_in_the_environment_is_one_error_line(tiny_built, tmp_path):
    image = tmp_path / "p.png"
    cv2.imwrite(str(image), np.zeros((32, 32), np.uint8))
    for value in ("abc", "0", "-2"):
        proc = _run(
            [sys.executable, "-m", "zsad_edge.runtime.cli", "detect", str(tiny_built.path), str(image), "--out",
             str(tmp_path / "o")],
            env={"ZSAD_EDGE_THREADS": value},
        )  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert _error_lines(proc.stderr) == [
            f"error: ZSAD_EDGE_THREADS={value!r} is not a thread count: set a whole number >= 1, or unset it"
        ]
