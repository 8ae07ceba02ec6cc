"""Evaluation on MVTec-layout folders: real-world layout quirks, partial reports, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import write_image

from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.evaluation.dataset import scan_dataset
from zsad_edge.runtime.evaluation.evaluate import METRICS, evaluate


def test_reader_finds_both_mask_namings_and_lists_problems(quirky_set):
    (category,) = scan_dataset(quirky_set)
    by_name = {s.image.name: s for s in category.samples}
    assert by_name["a+-1.png"].mask.name == "a+-1_mask.png"
    assert by_name["b.png"].mask.name == "b.png"
    assert by_name["no_mask.png"].mask is None and by_name["g0.png"].mask is None
    assert len(category.train_images()) == 3
    assert any("no mask for test/scratch/no_mask.png" in p for p in category.problems)
    assert any("1 mask(s) in ground_truth/ have no test image" in p for p in category.problems)


def test_partial_report_names_what_was_skipped(quirky_set, tiny_built, tiny_detector):
    categories = scan_dataset(quirky_set)
    report = evaluate(
        {"runtime": tiny_detector, "reference": tiny_built.reference_detector()}, categories, progress=False
    )
    entry = report["categories"]["parts"]
    assert entry["images"] == 7  # corrupt image skipped; no_mask and wrong_size kept for image metrics
    skipped = "\n".join(entry["skipped"])
    assert "cannot decode image" in skipped and "wrong_size.png is 10x10 but its image is 60x40" in skipped
    runtime, reference = entry["metrics"]["runtime"], entry["metrics"]["reference"]
    assert set(runtime) == set(METRICS)
    for metric in METRICS:
        assert runtime[metric] == pytest.approx(reference[metric], abs=1e-4)
    assert report["mean"]["runtime"] == runtime


def test_no_defective_images_gives_nan_and_a_note(tmp_path, tiny_detector):
    write_image(tmp_path / "only_good" / "test" / "good" / "g.png", np.zeros((30, 30), np.uint8))
    report = evaluate({"runtime": tiny_detector}, scan_dataset(tmp_path / "only_good"), progress=False)
    entry = report["categories"]["only_good"]
    assert np.isnan(entry["metrics"]["runtime"]["image_auroc"]) and np.isnan(entry["metrics"]["runtime"]["aupro"])
    assert "no defective images: image metrics undefined (NaN)" in entry["notes"]


def test_bad_dataset_folders_are_named(tmp_path):
    with pytest.raises(ZsadEdgeError, match="dataset folder not found"):
        scan_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsadEdgeError, match="no MVTec-layout category"):
        scan_dataset(tmp_path / "empty")


@pytest.mark.slow
def test_eval_cli_on_battery_weld_runtime_vs_reference(tiny_built, battery_weld, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zsad_edge.runtime.cli",
            "eval",
            str(tiny_built.path),
            str(battery_weld),
            "--reference",
            "--out",
            str(tmp_path / "report.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    entry = report["categories"]["battery_weld"]
    assert entry["images"] == 128
    for metric in METRICS:
        assert entry["metrics"]["runtime"][metric] == pytest.approx(entry["metrics"]["reference"][metric], abs=1e-4)
    assert "| battery_weld | runtime |" in proc.stdout


def test_eval_cli_error_is_one_line(tiny_built, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "eval", str(tiny_built.path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no MVTec-layout category")


def test_few_shot_runtime_and_reference_side_by_side(quirky_set, tiny_built, tmp_path):
    from zsad_edge.runtime.detector import Detector

    categories = scan_dataset(quirky_set)
    runtime = Detector.from_bundle(tiny_built.path)
    runtime.fit_normal([str(p) for p in categories[0].train_images()]).save(tmp_path / "bank.npz")
    reference = tiny_built.reference_detector()
    reference.load_memory_bank(tmp_path / "bank.npz")
    report = evaluate({"runtime": runtime, "reference": reference}, categories, progress=False)
    metrics = report["categories"]["parts"]["metrics"]
    for metric in METRICS:
        assert metrics["runtime"][metric] == pytest.approx(metrics["reference"][metric], abs=1e-4)
