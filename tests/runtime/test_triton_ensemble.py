"""`zsad-edge triton-repo --kind ensemble`: every config parses with Triton's protobuf, the graph
models declare exactly what the ONNX graphs take and give, the steps fit together, and the
ensemble, run by a real tritonserver (graph models on an onnxruntime stand-in: tests/
triton_onnx_standin.py), answers as the local Detector does."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import REPO_ROOT
from serving_helpers import Served, assert_same_result, metric, parts

from zsad_edge.runtime.bundle import load_manifest, manifest_digest
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import ImageReadError, ZsadEdgeError
from zsad_edge.runtime.serving.ensemble import check_ensemble
from zsad_edge.runtime.serving.model_config import CONFIG_FILE, config_proto, parse_config
from zsad_edge.runtime.serving.remote import RemoteDetector
from zsad_edge.runtime.serving.repository import RepositoryOptions, write_repository
from zsad_edge.runtime.serving.scoring import model_version

pytestmark = pytest.mark.needs_module("tritonclient", "onnx")
STANDIN = Path(__file__).resolve().parent.parent / "triton_onnx_standin.py"
TRITON_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _triton_repo(*arguments) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "zsad_edge.runtime.cli", "triton-repo", *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def _configs(repository: Path) -> dict:
    return {folder.name: parse_config((folder / CONFIG_FILE).read_text()) for folder in repository.iterdir()}


def _declared(entries) -> list:
    """(name, type, dims as the model sees them) of config inputs or outputs."""
    name_of = config_proto().DataType.Name
    return [(e.name, name_of(e.data_type), list(e.reshape.shape if e.HasField("reshape") else e.dims)) for e in entries]


def _graph(path: Path) -> list:
    """The same triples read from the ONNX graph by onnx itself (batch axis dropped)."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def triples(values):
        return [
            (
                v.name,
                TRITON_TYPES[v.type.tensor_type.elem_type],
                [d.dim_value or -1 for d in v.type.tensor_type.shape.dim][1:],
            )
            for v in values
        ]

    return triples(graph.input), triples(graph.output)


@pytest.mark.parametrize("method, graphs", [("aprilgan", ["image_encoder", "heads"]),
                                            ("sdp", ["image_encoder", "heads"]),
                                            ("fnn", ["image_encoder", "heads", "fnn"])])  # fmt: skip
def test_every_config_parses_and_the_graph_models_declare_what_the_graphs_take(
    method_bundles, method, graphs, tmp_path
):
    bundle = method_bundles[method]
    written = _triton_repo(bundle, "--out", tmp_path / "repo", "--kind", "ensemble", "--max-batch", 4)
    assert written.returncode == 0, written.stderr
    configs = _configs(tmp_path / "repo")
    assert sorted(configs) == sorted([method, f"{method}_preprocess", f"{method}_postprocess",
                                      *(f"{method}_{g}" for g in graphs)])  # fmt: skip
    manifest = load_manifest(bundle)
    (version,) = json.loads(written.stdout)["versions"]
    assert version == str(model_version(manifest_digest(bundle)))
    for graph in graphs:
        config = configs[f"{method}_{graph}"]
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4
        stored = tmp_path / "repo" / f"{method}_{graph}" / version / "model.onnx"
        stored = stored / "model.onnx" if stored.is_dir() else stored
        inputs, outputs = _graph(bundle / manifest.components[graph].file)
        assert _declared(config.input) == inputs and _declared(config.output) == outputs
        assert _graph(stored) == (inputs, outputs)  # the copy is the bundle's graph
        assert not config.optimization.HasField("execution_accelerators")  # CPU: no TensorRT
    score = next(o for o in configs[f"{method}_heads"].output if o.name == "image_score")
    assert list(score.dims) == [1] and score.HasField("reshape") and list(score.reshape.shape) == []
    steps = [step.model_name for step in configs[method].ensemble_scheduling.step]
    assert steps == [f"{method}_preprocess", *(f"{method}_{g}" for g in graphs), f"{method}_postprocess"]
    check_ensemble(configs[method], configs)


def test_a_gpu_ensemble_runs_onnxruntime_with_tensorrt_and_an_engine_cache(method_bundles, tmp_path):
    written = _triton_repo(method_bundles["aprilgan"], "--out", tmp_path / "repo", "--kind", "ensemble", "--gpu",
                           "--instances", 2, "--trt-cache", "/srv/trt")  # fmt: skip
    assert written.returncode == 0, written.stderr
    configs = _configs(tmp_path / "repo")
    encoder = configs["aprilgan_image_encoder"]
    assert encoder.instance_group[0].kind == encoder.instance_group[0].KIND_GPU and encoder.instance_group[0].count == 2
    (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP32", "max_workspace_size_bytes": str(2 << 30), "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/srv/trt/aprilgan_image_encoder",
    }  # fmt: skip
    pre = configs["aprilgan_preprocess"]
    assert pre.instance_group[0].kind == pre.instance_group[0].KIND_CPU  # decoding stays on the CPU


def _engine_folder(folder: Path, bundle: Path, capability: str, max_batch: int) -> Path:
    """An engine folder as `build_engines.py engines` leaves it (records keyed to this bundle's
    graphs); the engine files are placeholders: only their routing into the repository is tested."""
    manifest = load_manifest(bundle)
    folder.mkdir(parents=True)
    for component in ("image_encoder", "heads"):
        key = {"component": component, "precision": "fp32", "onnx_sha256": manifest.component_digest(component),
               "gpu_name": "some GPU", "compute_capability": capability, "tensorrt_version": "10.9",
               "profile": {"batch": [1, 1, max_batch]}}  # fmt: skip
        (folder / f"{component}.fp32.engine").write_bytes(f"plan {component} sm{capability}".encode())
        (folder / f"{component}.fp32.json").write_text(json.dumps({"key": key, "engine_sha256": "-"}))
    return folder


def test_engine_folders_become_tensorrt_plan_models_one_plan_per_compute_capability(method_bundles, tmp_path):
    bundle = method_bundles["aprilgan"]
    ampere = _engine_folder(tmp_path / "a100", bundle, "8.0", 8)
    orin = _engine_folder(tmp_path / "orin", bundle, "8.7", 8)
    written = _triton_repo(bundle, "--out", tmp_path / "repo", "--kind", "ensemble", "--engines", ampere,
                           "--engines", orin)  # fmt: skip
    assert written.returncode == 0, written.stderr
    configs = _configs(tmp_path / "repo")
    version = str(model_version(manifest_digest(bundle)))
    encoder = configs["aprilgan_image_encoder"]
    assert encoder.platform == "tensorrt_plan"
    assert dict(encoder.cc_model_filenames) == {"8.0": "model.sm80.plan", "8.7": "model.sm87.plan"}
    stored = tmp_path / "repo" / "aprilgan_image_encoder" / version
    assert (stored / "model.sm87.plan").read_bytes() == b"plan image_encoder sm8.7"
    assert configs["aprilgan_postprocess"].parameters["graphs"].string_value == "tensorrt_plan"

    small = _engine_folder(tmp_path / "small", bundle, "8.6", 4)
    refused = _triton_repo(bundle, "--out", tmp_path / "r2", "--kind", "ensemble", "--engines", small)
    assert refused.returncode == 2 and "takes batches up to 4" in refused.stderr and "--max-batch 4" in refused.stderr
    other = _engine_folder(tmp_path / "other", method_bundles["sdp"], "8.6", 8)
    refused = _triton_repo(bundle, "--out", tmp_path / "r3", "--kind", "ensemble", "--engines", other)
    assert refused.returncode == 2 and "no engine of image_encoder" in refused.stderr
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_bundles_and_options_an_ensemble_cannot_take_are_one_error_line(method_bundles, tmp_path):
    cases = [
        ((method_bundles["clipsam"], "--kind", "ensemble"), "use --kind python"),
        ((method_bundles["aprilgan"], "--engines", tmp_path), "needs --kind ensemble"),
        ((method_bundles["aprilgan"], "--kind", "ensemble", "--engines", tmp_path / "none"), "no engine folder"),
    ]
    for arguments, message in cases:
        result = _triton_repo(*arguments, "--out", tmp_path / "repo")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "repo").exists()


def test_an_ensemble_whose_steps_do_not_fit_is_refused(method_bundles, tmp_path):
    options = RepositoryOptions(kind="ensemble")
    write_repository(method_bundles["sdp"], tmp_path / "repo", options)
    configs = _configs(tmp_path / "repo")
    heads = configs["sdp_heads"]
    heads.input[1].dims[0] += 1  # a graph with another tap count than the encoder gives
    configs["sdp_postprocess"].output[0].data_type = heads.input[1].data_type + 1
    with pytest.raises(ZsadEdgeError) as refused:
        check_ensemble(configs["sdp"], configs)
    assert "sdp_heads input 'surgery_taps' is TYPE_FP32" in str(refused.value)
    assert "ensemble output 'score'" in str(refused.value)


def _standin_repository(bundle: Path, out: Path, max_batch: int = 8) -> Path:
    """The ensemble repository with its onnxruntime_onnx models run by the stand-in (python backend)."""
    write_repository(bundle, out, RepositoryOptions(kind="ensemble", max_batch=max_batch, max_queue_delay_us=20000))
    for folder in out.iterdir():
        config = parse_config((folder / CONFIG_FILE).read_text())
        if config.platform == "onnxruntime_onnx":
            config.platform, config.backend = "", "python"
            (folder / CONFIG_FILE).write_text(str(config))
            for version in (p for p in folder.iterdir() if p.is_dir()):
                shutil.copyfile(STANDIN, version / "model.py")
    return out


@pytest.mark.slow
@pytest.mark.needs_module("pytriton")
def test_the_ensemble_on_a_real_tritonserver_answers_as_the_local_detector(method_bundles, tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    for method in ("aprilgan", "sdp", "fnn"):
        for folder in _standin_repository(method_bundles[method], tmp_path / method).iterdir():
            shutil.move(folder, repository / folder.name)  # one repository, three ensembles
    served = Served("--repository", repository)
    remotes = []
    try:
        images = parts(tmp_path)
        for method in ("aprilgan", "sdp", "fnn"):
            remote = RemoteDetector(served.url, method)
            remotes.append(remote)
            local = Detector.from_bundle(method_bundles[method], backend="cpu")  # onnxruntime, as the ensemble
            got, want = remote.detect_batch(images), local.detect_batch(images)
            assert [r.anomaly_map.shape for r in got] == [(60, 80), (90, 70), (48, 64), (75, 100)]
            for one, other in zip(got, want):
                assert_same_result(one, other)
            assert remote.record["backend"] == "triton ensemble (onnxruntime_onnx)" and remote.record["model"] == method
        truncated = tmp_path / "bad.png"
        truncated.write_bytes(b"\x89PNG\r\n\x1a\n")
        with pytest.raises(ImageReadError, match="cannot decode image"):
            remotes[0](truncated)
        frame = np.full((64, 64, 3), 128, np.uint8)
        threads = [threading.Thread(target=remotes[0], args=(frame,)) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        text = served.metrics_text()
        requests = metric(text, "nv_inference_request_success", "aprilgan_image_encoder")
        executions = metric(text, "nv_inference_exec_count", "aprilgan_image_encoder")
        assert requests >= 16 + 4 and executions < requests  # the encoder ran batches of several requests
        assert remotes[0](frame).score == pytest.approx(
            Detector.from_bundle(method_bundles["aprilgan"])(frame).score, abs=1e-6
        )
    finally:
        for remote in remotes:
            remote.close()
        assert served.stop() == 0


@pytest.fixture(scope="module")
def variant_bundle(method_bundles, normal_folder, tmp_path_factory) -> Path:
    from zsad_edge.calibration.drift import DriftTolerance
    from zsad_edge.calibration.variants import add_precision, load_calibration_images

    bundle = Path(shutil.copytree(method_bundles["aprilgan"], tmp_path_factory.mktemp("variants") / "aprilgan"))
    images = load_calibration_images([normal_folder], None)
    loose = DriftTolerance(min_map_pearson=0.9, min_score_spearman=None)  # random tiny weights: int8 scores are noise
    for precision in ("int8", "int8-dynamic", "fp16"):
        add_precision(bundle, precision, images, "minmax", loose)
    return bundle


def test_each_variant_gets_its_graphs_and_its_tensorrt_precision(variant_bundle, tmp_path):
    manifest = load_manifest(variant_bundle)
    for precision, mode in (("int8", "INT8"), ("fp16", "FP16")):
        out = tmp_path / precision
        written = _triton_repo(variant_bundle, "--out", out, "--kind", "ensemble", "--precision", precision, "--gpu")
        assert written.returncode == 0, written.stderr
        configs = _configs(out)
        encoder = configs[f"aprilgan-{precision}_image_encoder"]
        (accelerator,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.parameters["precision_mode"] == mode
        assert encoder.optimization.graph.level == (1 if precision == "fp16" else 0)
        variant = manifest.with_precision(precision).components["image_encoder"]
        assert _declared(encoder.input) + _declared(encoder.output) == sum(_graph(variant_bundle / variant.file), [])
        assert configs[f"aprilgan-{precision}_postprocess"].parameters["precision"].string_value == precision
    refused = _triton_repo(variant_bundle, "--out", tmp_path / "r", "--kind", "ensemble", "--precision", "int8-dynamic",
                           "--gpu")  # fmt: skip
    assert refused.returncode == 2 and "onnxruntime's CPU provider only" in refused.stderr
    cpu = _triton_repo(variant_bundle, "--out", tmp_path / "r", "--kind", "ensemble", "--precision", "int8-dynamic")
    assert cpu.returncode == 0, cpu.stderr
