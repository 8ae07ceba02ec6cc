"""`zsad-edge bench` and `bench-compare`: the statistics on samples with known answers, the
environment refusal, bad records, and the gate catching a real slowdown and a real output change."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO_ROOT, wait_for_stop_handler

from zsad_edge.runtime.bench.compare import Thresholds, compare, confirmed, load_record
from zsad_edge.runtime.bench.record import KERNEL_SAMPLES, SCHEMA, SCHEMA_VERSION, reference_kernel
from zsad_edge.runtime.bench.statistics import judge
from zsad_edge.runtime.contract import MANIFEST_FILE
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import ZsadEdgeError

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli"]
TIMED = ("--backend", "cpu", "--batch-size", 4, "--threads", 2)  # what the baseline below timed
pytestmark = pytest.mark.needs_module("scipy")  # the gate's statistics


def _samples(median, spread, count=40, seed=0):
    """Log-normal timings around `median` with relative spread `spread` (like real latencies)."""
    return list(median * np.exp(spread * np.random.default_rng(seed).standard_normal(count)))


@pytest.mark.parametrize(
    "new_median, spread, verdict",
    [
        (10.0, 0.02, "unchanged"),  # the same distribution, drawn again
        (13.0, 0.02, "regression"),  # 30 % slower, tight samples
        (13.0, 0.8, "inconclusive"),  # 30 % slower, but the samples are all over the place
        (7.0, 0.02, "improvement"),  # 30 % faster
        (10.0, 0.3, "inconclusive"),  # no shift, yet a 10 % change would hide in this noise
        (10.6, 0.02, "unchanged"),  # 6 %: below the threshold, however significant
    ],
)
def test_verdicts_on_samples_with_known_answers(new_median, spread, verdict):
    result = judge("end_to_end", _samples(10.0, spread, seed=1), _samples(new_median, spread, seed=2))
    assert result.verdict == verdict, result
    assert result.ratio == pytest.approx(new_median / 10.0, rel=0.25)


def test_a_shift_below_the_floor_is_no_change_however_large_its_ratio():
    base, new = _samples(0.30, 0.01, seed=1), _samples(0.39, 0.01, seed=2)  # a 0.3 ms stage, 30 % slower
    assert judge("postprocess", base, new).verdict == "regression"
    assert judge("postprocess", base, new, min_shift_ms=0.25).verdict == "unchanged"
    assert judge("encode", _samples(10.0, 0.01, seed=1), _samples(13.0, 0.01, seed=2), min_shift_ms=0.25).verdict == (
        "regression"
    )


def test_machine_noise_makes_a_small_shift_inconclusive():
    base, new = _samples(10.0, 0.01, seed=1), _samples(11.5, 0.01, seed=2)
    assert judge("encode", base, new).verdict == "regression"
    assert judge("encode", base, new, machine_noise=0.2).verdict == "inconclusive"


def test_a_machine_that_is_itself_slower_reads_as_such_not_as_a_regression():
    base, new = _samples(10.0, 0.01, seed=1), _samples(13.0, 0.01, seed=2)
    assert judge("encode", base, new, machine_ratio=1.0).verdict == "regression"
    assert judge("encode", base, new, machine_ratio=1.25).verdict == "inconclusive"  # 1.3 / 1.25: within 10 %
    assert judge("encode", base, new, machine_ratio=0.8).verdict == "regression"  # a faster machine excuses nothing
    faster = _samples(7.0, 0.01, seed=2)
    assert judge("encode", base, faster, machine_ratio=0.75).verdict == "inconclusive"


def test_a_regression_counts_only_once_a_second_measurement_repeats_it():
    slow = _record(samples=_samples(13.0, 0.01, seed=3))
    first = compare(_record(), slow)
    assert first.slow_configs == ["cpu/fp32/b1"] and first.exit_code == 1
    not_again = confirmed(first, compare(_record(), _record(samples=_samples(10.0, 0.01, seed=4))))
    assert not_again.exit_code == 0 and not_again.unconfirmed == ["cpu/fp32/b1 end_to_end"]
    assert not_again.metrics["cpu/fp32/b1"][0].verdict == "inconclusive"
    again = confirmed(first, compare(_record(), _record(samples=_samples(13.0, 0.01, seed=5))))
    assert again.exit_code == 1 and again.regressions == ["cpu/fp32/b1 end_to_end"] and again.unconfirmed == []


def test_the_machine_probe_counts_only_between_runs_that_probed_alike():
    slow_machine = _record()
    slow_machine["noise"] = {"reference_kernel_ms": _samples(6.0, 0.02), "reference_kernel_threads": 2}
    two_threads = _record()
    two_threads["noise"] = {"reference_kernel_ms": _samples(3.0, 0.02), "reference_kernel_threads": 2}
    assert compare(two_threads, slow_machine).kernel_ratio == pytest.approx(2.0, rel=0.1)
    assert compare(_record(), slow_machine).kernel_ratio == 1.0  # a one-thread probe says nothing here
    assert len(reference_kernel(2)) == KERNEL_SAMPLES and min(reference_kernel(2)) > 0


def test_too_few_samples_are_refused():
    with pytest.raises(ZsadEdgeError, match="too few samples"):
        judge("encode", [1.0, 2.0], [1.0, 2.0, 3.0])


def _record(environment=None, samples=None, outputs=None):
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "environment": environment or {"cpu": "EPYC", "onnxruntime": "1.32.0", "bundle_manifest_sha256": "aa"},
        "configs": {"cpu/fp32/b1": {"samples_ms": {"end_to_end": samples or _samples(10.0, 0.02)}}},
        "noise": {"reference_kernel_ms": _samples(3.0, 0.02)},
        "outputs": outputs or {},
    }


def test_a_baseline_from_another_environment_is_refused_naming_every_difference():
    baseline = _record()
    new = _record({"cpu": "Xeon", "onnxruntime": "1.33.0", "bundle_manifest_sha256": "aa"})
    with pytest.raises(ZsadEdgeError) as refused:
        compare(baseline, new)
    message = str(refused.value)
    assert "cpu: 'EPYC' -> 'Xeon'" in message and "onnxruntime: '1.32.0' -> '1.33.0'" in message
    assert "--allow-env-change" in message and "bundle" not in message.split("(")[1].split(")")[0]
    allowed = compare(baseline, new, allow_env_change=True)
    assert len(allowed.environment_differences) == 2 and allowed.exit_code == 0


def test_changed_outputs_fail_even_when_latency_passes():
    thumb = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    image = {"score": 0.5, "is_anomalous": False, "map_thumb": thumb.tolist()}
    moved = {"score": 0.52, "is_anomalous": True, "map_thumb": (thumb + 0.01).tolist()}
    result = compare(_record(outputs={"cpu/fp32": [image]}), _record(outputs={"cpu/fp32": [moved]}), Thresholds())
    check = result.outputs[0]
    assert check.changed and check.verdict_changes == 1 and check.max_score_error == pytest.approx(0.02)
    assert check.max_map_error == pytest.approx(0.01) and result.exit_code == 1
    assert result.regressions == ["cpu/fp32 outputs"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("{not json", "is not valid JSON"),
        ('{"benchmark": "latency"}', "is not a zsad-edge bench record"),
        (json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION + 1}), "reads up to"),
        (json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION}), "incomplete"),
    ],
)
def test_bad_records_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "base.json"
    path.write_text(content)
    with pytest.raises(ZsadEdgeError, match=message):
        load_record(path)


def _bench(*arguments):
    return subprocess.run([*CLI, *map(str, arguments)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


@pytest.fixture(scope="module")
def baseline(tiny_built, tmp_path_factory):
    """A real baseline of the tiny bundle: batch 4, two threads, 10 samples per stage."""
    path = tmp_path_factory.mktemp("bench") / "base.json"
    proc = _bench("bench", tiny_built.path, *TIMED, "--runs", 10,
                  "--out", path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return path


def _scaled(baseline, factor, path):
    """The baseline with every stage's samples times `factor` (the reference kernel's left as measured):
    a record whose answer is known, since no scheduler makes a run 4x faster or slower than itself."""
    record = load_record(baseline)
    for config in record["configs"].values():
        config["samples_ms"] = {stage: [t * factor for t in ts] for stage, ts in config["samples_ms"].items()}
    path.write_text(json.dumps(record))
    return path


def test_a_record_holds_samples_outputs_fingerprint_and_cold_start(baseline):
    record = load_record(baseline)
    config = record["configs"]["cpu/fp32/b4"]
    assert {"preprocess", "encode", "heads", "postprocess", "end_to_end"} == set(config["samples_ms"])
    assert all(len(samples) == 10 for samples in config["samples_ms"].values()) and config["images_per_s"] > 0
    assert config["providers"] == ["CPUExecutionProvider"] and len(record["noise"]["reference_kernel_ms"]) >= 3
    assert len(record["outputs"]["cpu/fp32"]) == 8 and len(record["outputs"]["cpu/fp32"][0]["map_thumb"]) == 16
    cold = record["cold_start"]
    assert cold["load_full_verify_s"] > 0 and cold["first_frame_ms"] > 0 and cold["peak_rss_mb"] > 50
    assert {"cpu", "cpu_flags", "onnxruntime", "bundle_manifest_sha256"} <= set(record["environment"])


def test_a_fourfold_slowdown_fails_the_gate_with_markdown_and_json(tiny_built, baseline, tmp_path):
    fast_baseline = _scaled(baseline, 0.25, tmp_path / "fast.json")
    proc = _bench("bench", tiny_built.path, *TIMED, "--runs", 10, "--no-cold-start",
                  "--baseline", fast_baseline, "--markdown", tmp_path / "verdict.md",
                  "--json", tmp_path / "verdict.json")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "confirming cpu/fp32/b4: measuring again" in proc.stderr  # failed only once it repeated
    result_line = proc.stdout.strip().splitlines()[-1]
    assert result_line.startswith("RESULT: REGRESSION in cpu/fp32/b4 ") and "end_to_end" in result_line
    assert (tmp_path / "verdict.md").read_text().strip().endswith(result_line)
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["exit_code"] == 1 and "cpu/fp32/b4 end_to_end" in verdict["regressions"]


def test_a_fourfold_speed_up_passes_as_an_improvement(tiny_built, baseline, tmp_path):
    slow_baseline = _scaled(baseline, 4.0, tmp_path / "slow.json")
    proc = _bench("bench", tiny_built.path, *TIMED, "--runs", 10, "--no-cold-start",
                  "--baseline", slow_baseline, "--json", tmp_path / "verdict.json")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    end_to_end = [m for m in verdict["metrics"]["cpu/fp32/b4"] if m["metric"] == "end_to_end"][0]
    assert end_to_end["verdict"] == "improvement" and verdict["regressions"] == []


def test_a_recalibrated_bundle_is_caught_as_an_output_regression(tiny_built, baseline, tmp_path):
    bundle = tmp_path / "recalibrated"
    shutil.copytree(tiny_built.path, bundle)
    scores = [image["score"] for image in load_record(baseline)["outputs"]["cpu/fp32"]]
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["scoring"]["image_threshold"] = float(np.median(scores))  # some verdicts flip
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    refused = _bench(
        "bench", bundle, "--backend", "cpu", "--batch-size", 4, "--runs", 5, "--no-cold-start", "--baseline", baseline
    )
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "bundle_manifest_sha256" in lines[0]
    proc = _bench("bench", bundle, *TIMED, "--runs", 5, "--no-cold-start",
                  "--baseline", baseline, "--allow-env-change", "--json", tmp_path / "verdict.json")  # fmt: skip
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert proc.returncode == 1 and "cpu/fp32 outputs" in verdict["regressions"]
    assert verdict["outputs"][0]["verdict_changes"] > 0 and "environment changed" in proc.stdout


def test_bench_compare_plots_and_refuses_bad_records(baseline, tmp_path):
    proc = _bench("bench-compare", baseline, baseline, "--plot", tmp_path / "plots")
    assert proc.returncode == 0 and "RESULT: no regression" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir())[0] == "encode.png"
    (tmp_path / "other.json").write_text('{"benchmark": "latency"}')
    bad = _bench("bench-compare", baseline, tmp_path / "other.json")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "is not a zsad-edge bench record" in lines[0]


def test_sigint_stops_a_bench_after_the_round_in_hand_and_writes_nothing(tiny_built, tmp_path):
    import signal

    out = tmp_path / "run.json"
    proc = subprocess.Popen(
        [*CLI, "bench", str(tiny_built.path), "--runs", "100000", "--no-cold-start", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    wait_for_stop_handler(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and not out.exists()
    assert stderr.strip().splitlines()[-1].startswith("stopped by SIGINT after ")
    assert stderr.strip().endswith("round(s); no record written")


def test_a_matrix_runs_what_applies_and_lists_what_it_skipped(tiny_built, tmp_path):
    out = tmp_path / "run.json"
    proc = _bench("bench", tiny_built.path, "--backend", "cpu", "--precision", "fp32", "int8", "bf16",
                  "--runs", 3, "--no-cold-start", "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert list(load_record(out)["configs"]) == ["cpu/fp32/b1"]
    assert "skipped cpu/int8: the bundle has no int8 variant" in proc.stdout
    assert "skipped cpu/bf16: the bundle has no bf16 variant" in proc.stdout
    nothing = _bench("bench", tiny_built.path, "--precision", "int8", "--runs", 3, "--no-cold-start")
    lines = nothing.stderr.strip().splitlines()
    assert nothing.returncode == 2 and len(lines) == 1 and "nothing in the matrix can run here" in lines[0]


def test_auto_is_timed_as_the_backend_it_picks(tiny_built, tmp_path):
    out = tmp_path / "run.json"
    proc = _bench("bench", tiny_built.path, "--runs", 3, "--no-cold-start", "--out", out)
    assert proc.returncode == 0, proc.stderr
    (key,) = load_record(out)["configs"]
    detector = Detector.from_bundle(tiny_built.path)  # detect's and watch's default, "auto"
    assert key == f"{detector.backend}/fp32/b1" and detector.backend in ("cpu", "openvino")


def test_records_of_different_images_are_refused_naming_both(baseline, tmp_path):
    other = load_record(baseline)
    other["settings"].update(images="samples/", image_count=5, images_sha256="0" * 64)
    (tmp_path / "other.json").write_text(json.dumps(other))
    proc = _bench("bench-compare", baseline, tmp_path / "other.json")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "the two runs timed different images" in lines[0]
    assert "baseline: synthetic, 8 image(s); this run: samples/, 5 image(s)" in lines[0]
