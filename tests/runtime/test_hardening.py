"""Issue 13: damaged inputs, stops and outputs, each reproduced through the command line a user runs."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import REPO_ROOT, write_image

from zsad_edge.runtime.bundle import load_manifest, stamp_path

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]


def _zsad(*args, **kwargs):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, **kwargs)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _one_error(proc) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = _errors(proc.stderr)
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _parts(folder: Path, count: int, shape=(48, 64), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_image(
            folder / f"p{i:03d}.png", (np.clip(0.5 + 0.1 * rng.standard_normal(shape), 0, 1) * 255).astype(np.uint8)
        )
    return folder


def _edited_bundle(tiny_built, tmp_path, edit) -> Path:
    bundle = tmp_path / "edited"
    shutil.copytree(tiny_built.path, bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    edit(data)
    (bundle / "manifest.json").write_text(json.dumps(data))
    return bundle


# 1. hand-edited manifests
@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda m: m["scoring"].update(image_threshold="0,5"), "scoring.image_threshold must be a number, got '0,5'"),
        (lambda m: m["scoring"].pop("map_threshold"), "scoring.map_threshold is missing (needs a number)"),
        (
            lambda m: m["preprocess"].update(mean=[0.5, 0.5]),
            "preprocess.mean must be three numbers (R, G, B), got [0.5, 0.5]",
        ),
        (lambda m: m.update(taps=[1, 2, 9]), "taps must lie within the model's 4 blocks, got [1, 2, 9]"),
        (
            lambda m: m["scoring"].update(rule="best"),
            "scoring.rule must be one of prompt, prompt_and_map_mean, normalised_sum",
        ),
        (
            lambda m: m["method"]["params"].update(gaussian_sigma=-1),
            "method.params.gaussian_sigma must be a number >= 0",
        ),
    ],
    ids=["threshold-string", "threshold-missing", "mean-length", "taps-beyond-model", "unknown-rule", "negative-sigma"],
)
def test_hand_edited_manifest_is_refused_naming_the_field(tiny_built, tmp_path, edit, named):
    bundle = _edited_bundle(tiny_built, tmp_path, edit)
    images = _parts(tmp_path / "in", 2)
    for command in (["detect", bundle, images, "--out", tmp_path / "out"], ["calibrate", bundle, images]):
        error = _one_error(_zsad(*command))
        assert named in error and "fix the field" in error


def test_manifest_saved_with_a_bom_is_read(tiny_built, tmp_path):
    bundle = tmp_path / "bom"
    shutil.copytree(tiny_built.path, bundle)
    text = (bundle / "manifest.json").read_text(encoding="utf-8")
    (bundle / "manifest.json").write_bytes("\ufeff".encode("utf-8") + text.encode("utf-8"))
    assert load_manifest(bundle).taps == [1, 2, 3, 4]


# 2. memory banks
def test_truncated_memory_bank_is_one_named_error(tiny_built, tmp_path):
    normals = _parts(tmp_path / "normals", 2)
    bank = tmp_path / "bank.npz"
    assert _zsad("fit-normal", tiny_built.path, normals, "--out", bank).returncode == 0
    bank.write_bytes(bank.read_bytes()[:5000])
    error = _one_error(_zsad("detect", tiny_built.path, normals, "--memory-bank", bank, "--out", tmp_path / "o"))
    assert f"memory bank {bank} is unreadable" in error and "zsad-edge fit-normal" in error


# 3. stopping and resuming
def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_sigint_stops_detect_with_a_summary_and_resume_finishes(tiny_built, tmp_path):
    images, out = _parts(tmp_path / "in", 300, shape=(32, 32)), tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "detect", str(tiny_built.path), str(images), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert _wait_for(lambda: len(list(out.glob("*.json"))) >= 3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    done = summary["scored"]
    assert 3 <= done < 300 and summary["stopped"] == f"stopped by SIGINT after {done} of 300"
    assert f"stopped by SIGINT after {done} of 300 image(s); rerun with --resume to finish" in stderr
    assert len(list(out.glob("p*.json"))) == done  # every result written whole, nothing half
    resumed = _zsad("detect", tiny_built.path, images, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = json.loads((out / "summary.json").read_text())
    assert final["scored"] == 300 and final["resumed"] == done and final["stopped"] is None
    assert f"300 image(s) scored ({done} from an earlier run)" in resumed.stdout


def _signal_on_progress(command: list, marker: str, number: int) -> tuple[int, str]:
    """Run a CLI command, send `number` as soon as its progress bar shows `marker`; (exit code, stderr)."""
    proc = subprocess.Popen(
        [*CLI, *map(str, command)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO_ROOT
    )
    seen = b""
    while marker.encode() not in seen:
        chunk = proc.stderr.read1(256)
        if not chunk:
            break
        seen += chunk
    proc.send_signal(number)
    seen += proc.stderr.read()
    return proc.wait(timeout=120), seen.decode("utf-8", "replace")


def test_sigterm_leaves_the_manifest_and_the_bank_as_they_were(tiny_built, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_built.path, bundle)
    normals = _parts(tmp_path / "normals", 600, shape=(32, 32))
    before = (bundle / "manifest.json").read_bytes()
    for command, marker in (
        (["calibrate", bundle, normals], "calibrate:"),
        (["fit-normal", bundle, normals, "--out", tmp_path / "bank.npz"], "fit-normal:"),
    ):
        returncode, stderr = _signal_on_progress(command, marker, signal.SIGTERM)
        assert returncode == 143, stderr
        assert "Traceback" not in stderr and "stopped by SIGTERM after" in stderr
        assert (bundle / "manifest.json").read_bytes() == before
    assert not (tmp_path / "bank.npz").exists()
    stamp = stamp_path(bundle).name  # the verification stamp beside the bundle is no leftover
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != stamp] == []  # no temp file


# 4. the demo keeps an existing bundle: tests/test_cli.py::test_demo_builds_and_detects_offline


# 5. fit-normal
def test_fit_normal_skips_unreadable_images_and_validates_shots(tiny_built, tmp_path):
    normals = _parts(tmp_path / "normals", 3)
    (normals / "p000.png").write_bytes(b"")
    bank = tmp_path / "bank.npz"
    proc = _zsad("fit-normal", tiny_built.path, normals, "--shots", "2", "--out", bank)
    assert proc.returncode == 0, proc.stderr
    assert "memory bank of 2 shot(s)" in proc.stdout and "skipped: image file is empty" in proc.stdout
    for shots in ("0", "-2"):
        error = _one_error(_zsad("fit-normal", tiny_built.path, normals, "--shots", shots, "--out", tmp_path / "b.npz"))
        assert error == f"error: --shots must be at least 1, got {shots}"


# 6. overlays
def test_overlay_colours_follow_the_thresholds_in_use(tiny_built):
    from zsad_edge.runtime.overlay import colour_range, render_overlay
    from zsad_edge.runtime.pipeline import DetectionResult

    assert colour_range({"map_threshold": 2.5, "map_normal_median": 2.2}) == pytest.approx((2.2, 2.8))
    assert colour_range({"map_threshold": 2.0, "map_max": 4.0}) == pytest.approx((0.0, 4.0))
    assert colour_range({"map_threshold": 0.5, "map_max": 1.0, "map_max_range": [0, 3.0]}) == pytest.approx((-2.0, 3.0))
    anomaly_map = np.tile(np.linspace(2.2, 2.8, 100, dtype=np.float32), (40, 1))  # a calibrated zero-shot range
    result = DetectionResult(
        score=0.7, anomaly_map=anomaly_map, mask=anomaly_map > 2.5, is_anomalous=True, text_score=0.7, map_peak=2.8
    )
    scoring = {"map_threshold": 2.5, "map_normal_median": 2.2, "image_threshold": 0.6}
    overlay = render_overlay(
        np.zeros((40, 100), np.uint8), result, scoring, {"calibrated": True, "source": "bundle"}, alpha=1.0
    )
    assert overlay.shape[1] == 640  # a 100-pixel frame is drawn enlarged (6.4x) so that its text can be read
    body = overlay[-256:]
    hues = cv2.cvtColor(body, cv2.COLOR_RGB2HSV)[128, [13, 269, 621], 0]
    assert hues[0] > 100 and 20 < hues[1] < 100 and hues[2] < 10  # blue -> green near the threshold -> red
    assert (body[:, 310:330] == 255).all(axis=2).any()  # the threshold's contour, white
    header = overlay[: overlay.shape[0] - 256]
    assert header.shape[0] >= 3 * 20  # three rows of text at least 20 px each
    assert (body == (255, 220, 0)).all(axis=2).any()  # a yellow box around the anomalous region


# 7. traceable outputs
def test_outputs_mirror_inputs_record_the_run_and_never_read_themselves(tiny_built, tmp_path):
    data = tmp_path / "set"
    for defect in ("good", "crack"):
        _parts(data / "test" / defect, 2, seed=len(defect))
    out = data / "results"  # inside the input folder
    for _ in range(2):
        proc = _zsad("detect", tiny_built.path, data, "--out", out)
        assert proc.returncode == 0, proc.stderr
        assert "4 image(s) scored" in proc.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == [
        "summary.json",
        "test/crack/p000.json",
        "test/crack/p001.json",
        "test/good/p000.json",
        "test/good/p001.json",
    ]
    result = json.loads((out / "test" / "good" / "p000.json").read_text())
    assert result["image"] == str(data / "test" / "good" / "p000.png") and result["elapsed_ms"] > 0
    assert result["run"]["bundle"] == str(tiny_built.path) and result["run"]["precision"] == "fp32"
    assert result["run"]["thresholds"] == {"image": 0.5, "map": 2.0, "calibrated": False, "source": "bundle"}
    assert (out / "test" / "good" / "p000_overlay.png").is_file()


def test_uncalibrated_bundle_flagging_most_images_warns_once(tiny_built, tmp_path):
    bundle = _edited_bundle(tiny_built, tmp_path, lambda m: m["scoring"].update(image_threshold=-1.0))
    proc = _zsad("detect", bundle, _parts(tmp_path / "in", 3), "--out", tmp_path / "out")
    assert proc.returncode == 0
    warnings = [line for line in proc.stderr.splitlines() if "uncalibrated bundle" in line]
    assert warnings == [
        "warning: 3 of 3 images flagged by an uncalibrated bundle: its thresholds are placeholders; "
        "run `zsad-edge calibrate BUNDLE NORMAL_IMAGES` first"
    ]


# 8. inputs
def test_float_tiff_in_0_255_scores_like_its_8bit_twin(tiny_detector, tmp_path):
    image = (np.random.default_rng(0).random((60, 80)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "f.tiff"), image.astype(np.float32))
    from_float, from_bytes = tiny_detector(tmp_path / "f.tiff"), tiny_detector(image)
    assert abs(from_float.score - from_bytes.score) < 1e-3


def test_masks_in_any_format_and_soft_masks_by_threshold(tmp_path):
    from zsad_edge.runtime.evaluation.dataset import load_mask, scan_dataset

    root = tmp_path / "kolektor"
    write_image(root / "test" / "good" / "g.jpg", np.zeros((20, 30), np.uint8))
    write_image(root / "test" / "crack" / "a.jpg", np.zeros((20, 30), np.uint8))
    soft = np.zeros((20, 30), np.uint8)
    soft[5:10, 5:10], soft[12:15, 12:15] = 200, 40
    write_image(root / "ground_truth" / "crack" / "a_mask.bmp", soft)
    sample = next(s for s in scan_dataset(root)[0].samples if s.defect == "crack")
    assert sample.mask.name == "a_mask.bmp"
    assert load_mask(sample, (20, 30)).sum() == 25 + 9  # any non-zero pixel
    assert load_mask(sample, (20, 30), threshold=0.5).sum() == 25  # above half of 255


def test_eval_exits_1_when_images_were_skipped(tiny_built, quirky_set, tmp_path):
    proc = _zsad("eval", tiny_built.path, quirky_set, "--out", tmp_path / "report.json")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"report written to {tmp_path / 'report.json'}"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped_images"] == 1 and "corrupt.png" in " ".join(report["categories"]["parts"]["skipped"])


def test_codec_messages_go_into_the_one_error_line(tiny_built, tmp_path):
    ok, encoded = cv2.imencode(".png", (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    damaged = bytearray(encoded.tobytes())
    damaged[60] ^= 0xFF  # breaks the compressed data: libpng prints "IDAT: incorrect data check"
    (tmp_path / "crc.png").write_bytes(bytes(damaged))
    proc = _zsad("detect", tiny_built.path, tmp_path / "crc.png", "--out", tmp_path / "out")
    error = _one_error(proc)
    assert [line for line in proc.stderr.splitlines() if "libpng" in line] == [error]  # no stray libpng line
    assert "libpng error: IDAT: incorrect data check" in error


def test_huge_8bit_files_are_decoded_reduced(tmp_path):
    from zsad_edge.runtime.image_io import read_image

    cv2.imwrite(str(tmp_path / "big.jpg"), np.full((4000, 3000, 3), 128, np.uint8))
    assert read_image(tmp_path / "big.jpg").shape == (4000, 3000, 3)
    assert read_image(tmp_path / "big.jpg", keep_side=896).shape == (2000, 1500, 3)  # / 4 would leave 750 < 896
    assert read_image(tmp_path / "big.jpg", keep_side=300).shape == (500, 375, 3)  # / 8
    assert read_image(tmp_path / "big.jpg", keep_side=2000).shape == (4000, 3000, 3)  # not twice as large
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((4000, 3000), 1000, np.uint16))
    assert read_image(tmp_path / "deep.png", keep_side=100).dtype == np.uint16  # 16-bit: decoded in full


# 9. permissions
@pytest.mark.torch_side
def test_files_renamed_into_place_follow_the_umask(tmp_path):

    code = (
        f"import os; os.umask(0o022)\n"
        f"from zsad_edge.export.build import build_bundle\nfrom zsad_edge.export.demo import demo_config\n"
        f"build_bundle(demo_config(__import__('pathlib').Path({str(tmp_path / 'b')!r}), False))\n"
        f"from zsad_edge.runtime.cli import main\n"
        f"main(['fit-normal', {str(tmp_path / 'b')!r}, {str(_parts(tmp_path / 'n', 2))!r}, "
        f"'--out', {str(tmp_path / 'bank.npz')!r}])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=REPO_ROOT, timeout=600)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "b" / "manifest.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b" / "heads.onnx").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "bank.npz").stat().st_mode & 0o777 == 0o644


# 10. benchmarks
def test_benchmark_reports_default_to_the_current_folder(tmp_path, monkeypatch):
    from zsad_edge.benchmarks.reports import write_report

    monkeypatch.chdir(tmp_path)
    assert write_report({"x": 1}, None, "latency_test") == tmp_path / "latency_test.json"


def test_max_images_draws_across_defect_types():
    from zsad_edge.runtime.evaluation.dataset import Sample, sample_across_defects

    samples = [Sample(Path(f"{d}{i}.png"), d) for d in ("blowhole",) * 1 for i in range(80)] + [
        Sample(Path(f"{d}{i}.png"), d) for d in ("crack", "fray") for i in range(10)
    ]
    drawn = sample_across_defects(samples, 9, seed=1)
    assert sorted(s.defect for s in drawn) == ["blowhole"] * 3 + ["crack"] * 3 + ["fray"] * 3
    assert drawn == sample_across_defects(samples, 9, seed=1) and drawn != sample_across_defects(samples, 9, seed=2)


# 11. pixel metrics
def test_pixel_metrics_keep_the_aspect_ratio():
    from zsad_edge.runtime.evaluation.evaluate import pixel_metric_size

    assert pixel_metric_size((1240, 500), 256) == (103, 256)  # KolektorSDD: tall stays tall
    assert pixel_metric_size((256, 400), 256) == (256, 164)
    assert pixel_metric_size((256, 400), None) == (400, 256)


def test_eval_stopped_midway_reports_the_images_it_scored(tiny_detector, quirky_set):
    """A stop during eval: metrics over the images scored so far, and the report says so."""
    import signal as signals

    from zsad_edge.runtime.evaluation.dataset import scan_dataset
    from zsad_edge.runtime.evaluation.evaluate import evaluate
    from zsad_edge.runtime.stopping import StopRequest

    stop = StopRequest()

    class StoppedAtTheThirdImage:
        calls = 0

        def detect_batch(self, images):
            self.calls += len(images)
            if self.calls == 3:
                stop.signal = signals.SIGINT  # as the handler would on Ctrl-C
            return tiny_detector.detect_batch(images)

    categories = scan_dataset(quirky_set)
    report = evaluate({"runtime": StoppedAtTheThirdImage()}, categories, progress=False, stop=stop)
    total = len(categories[0].samples)
    assert report["stopped"] == f"stopped by SIGINT after 3 of {total} images; metrics cover those"
    assert report["categories"]["parts"]["images"] == 3
