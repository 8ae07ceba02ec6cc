"""The OpenVINO backend: parity with onnxruntime for every method, the int8 Q/DQ and bf16 variants
within the drift gate, the compiled-model cache beside the bundle, "auto", and the refusals."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import relative_map_error
from needs import require_module

from zsad_edge.runtime.backends import openvino as ov_backend
from zsad_edge.runtime.contract import HEADS, IMAGE_ENCODER
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import BackendUnavailableError

require_module("openvino", module_level=True)


def _images(rng):
    return [(rng.random(shape) * 255).astype(np.uint8) for shape in ((90, 120), (64, 64, 3), (120, 80))]


@pytest.fixture(scope="module", params=["aprilgan", "sdp", "sdpplus", "fnn"])
def method_bundle(request, tiny_built, tmp_path_factory) -> Path:
    from zsad_edge.export.build import BuildConfig, build_bundle
    from zsad_edge.export.models.clip import ClipSpec
    from zsad_edge.export.models.fnn import FnnTrainConfig, RandomWordConfig

    if request.param == "aprilgan":
        return tiny_built.path
    config = BuildConfig(
        clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224),
        method=request.param,
        out_dir=tmp_path_factory.mktemp(request.param) / "bundle",
        random_heads=True,
        fnn=FnnTrainConfig(epochs=1, words=RandomWordConfig(pairs=200)),
    )
    return build_bundle(config).path


def test_openvino_gives_onnxruntimes_results_for_every_method(method_bundle, rng):
    runtime, openvino = (Detector.from_bundle(method_bundle, backend=b) for b in ("cpu", "openvino"))
    assert openvino.providers == ["OpenVINO CPU (f32)"]
    images = _images(rng)
    for got, want in zip(openvino.detect_batch(images), runtime.detect_batch(images)):
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4
        assert abs(got.score - want.score) <= 1e-5 and got.is_anomalous == want.is_anomalous


@pytest.fixture(scope="module")
def ov_variants(tiny_built, normal_folder, tmp_path_factory) -> Path:
    from zsad_edge.calibration.drift import DriftTolerance
    from zsad_edge.calibration.variants import add_precision, load_calibration_images

    bundle = Path(shutil.copytree(tiny_built.path, tmp_path_factory.mktemp("ov") / "bundle"))
    images = load_calibration_images([normal_folder], None)
    loose = DriftTolerance(min_map_pearson=0.9, min_score_spearman=None)  # random tiny weights: int8 scores are noise
    add_precision(bundle, "int8", images, "minmax", loose)
    add_precision(bundle, "fp16", images, "minmax")
    if ov_backend.native_bf16(ov_backend.import_openvino().Core()):
        add_precision(bundle, "bf16", images, "minmax")  # the default drift gate
    return bundle


@pytest.mark.parametrize("precision, hint", [("int8", "f32"), ("fp16", "f32"), ("bf16", "bf16")])
def test_int8_qdq_and_bf16_run_on_openvino_within_the_drift_gate(ov_variants, normal_folder, precision, hint):
    from zsad_edge.calibration.drift import DriftTolerance, check_drift, measure_drift
    from zsad_edge.runtime.bundle import load_manifest
    from zsad_edge.runtime.image_io import list_images

    if precision == "bf16" and not ov_backend.native_bf16(ov_backend.import_openvino().Core()):
        pytest.skip("this CPU has no native bf16")
    reference = Detector.from_bundle(ov_variants, backend="cpu")
    variant = Detector.from_bundle(ov_variants, backend="openvino", precision=precision)
    assert variant.providers == [f"OpenVINO CPU ({hint})"]  # int8's float parts in f32, as gated on onnxruntime
    recorded = load_manifest(ov_variants).precisions[precision]
    drift = measure_drift(reference, variant, [str(p) for p in list_images([normal_folder])])
    check_drift(drift, DriftTolerance(**recorded["tolerance"]), f"{precision} on OpenVINO")  # the recorded gate
    assert recorded["components"][IMAGE_ENCODER].precision == precision and recorded["drift"]["images"] == 6


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_variant_runs_on_its_first_compile_as_from_the_cache(ov_variants, precision, rng):
    """A freshly compiled fp16 graph names its outputs twice (`taps` and a Cast's output); the
    bundle's names are used either way."""
    shutil.rmtree(ov_backend.cache_folder(ov_variants), ignore_errors=True)
    images = _images(rng)
    first = Detector.from_bundle(ov_variants, backend="openvino", precision=precision)
    assert not first.encoder.loaded_from_cache
    fresh = first.detect_batch(images)
    cached = Detector.from_bundle(ov_variants, backend="openvino", precision=precision)
    assert cached.encoder.loaded_from_cache and first.backend == cached.backend == "openvino"
    for got, want in zip(cached.detect_batch(images), fresh):
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-5


def test_bf16_is_refused_on_onnxruntime(ov_variants):
    if not ov_backend.native_bf16(ov_backend.import_openvino().Core()):
        pytest.skip("this CPU has no native bf16: the variant could not be added")
    with pytest.raises(BackendUnavailableError, match="bf16 precision runs on the openvino backend"):
        Detector.from_bundle(ov_variants, backend="cpu", precision="bf16")


def test_compiled_models_are_cached_beside_the_bundle_and_recompiled_when_a_graph_changes(tiny_built, tmp_path):
    import onnx

    from zsad_edge.runtime.bundle import load_manifest, sha256_file, write_manifest

    bundle = Path(shutil.copytree(tiny_built.path, tmp_path / "bundle"))
    files = sorted(p.name for p in bundle.iterdir())
    first = Detector.from_bundle(bundle, backend="openvino")
    cache = tmp_path / "bundle.openvino"
    assert not first.encoder.loaded_from_cache and any(cache.iterdir())
    assert sorted(p.name for p in bundle.iterdir()) == files  # nothing written into the bundle
    second = Detector.from_bundle(bundle, backend="openvino")
    assert second.encoder.loaded_from_cache and second.heads_graph.loaded_from_cache

    manifest = load_manifest(bundle)
    heads_file = bundle / manifest.components[HEADS].file
    model = onnx.load(str(heads_file))
    weight = next(init for init in model.graph.initializer if init.dims and np.prod(init.dims) > 1)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 1.0  # a retrained head
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(heads_file))
    manifest.files[heads_file.name] = sha256_file(heads_file)
    write_manifest(bundle, manifest)
    third = Detector.from_bundle(bundle, backend="openvino")
    assert third.encoder.loaded_from_cache and not third.heads_graph.loaded_from_cache


def test_auto_picks_openvino_on_a_cpu_and_onnxruntime_for_what_openvino_cannot_run(tiny_built):
    assert Detector.from_bundle(tiny_built.path, backend="auto").providers[0].startswith("OpenVINO CPU")
    from zsad_edge.runtime.backends.components import resolve_auto

    assert resolve_auto({"fp32", "int8-dynamic"}) == "auto"  # onnxruntime's CPU provider


class FakeCore:
    """An OpenVINO core that reports a CPU without bf16."""

    available_devices = ["CPU"]

    def get_property(self, device, key):
        return ["FP32", "INT8"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ov_backend.check_precision("int8-dynamic", FakeCore(), "CPU"), "runs fp32, fp16, int8, bf16"),
        (lambda: ov_backend.check_precision("bf16", FakeCore(), "CPU"), "native bf16"),
        (lambda: ov_backend.OpenVinoComponent(Path("x.onnx"), FakeCore(), "NPU"), "no NPU device here"),
        (lambda: ov_backend.OpenVinoComponent(Path("x.onnx"), FakeCore(), "TPU"), "unknown OpenVINO device"),
    ],
)
def test_what_openvino_cannot_do_is_refused_by_name(call, message):
    with pytest.raises(BackendUnavailableError, match=message):
        call()


def test_a_missing_openvino_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendUnavailableError, match=r"zsad-edge\[openvino\]"):
        ov_backend.import_openvino()
    assert not ov_backend.openvino_available()


def test_eight_bit_weights_on_a_cpu_without_int8_dot_product_are_warned_about(monkeypatch, caplog):
    from zsad_edge.runtime import detector

    monkeypatch.setattr(detector, "int8_dot_product", lambda: None)
    detector._warn_on_saturating_int8({"weight_bits": 8}, "int8")
    detector._warn_on_saturating_int8({"weight_bits": 7}, "int8")
    assert len(caplog.records) == 1 and "--weight-bits 7" in caplog.records[0].getMessage()


def test_a_cache_folder_that_cannot_be_made_turns_the_cache_off(tmp_path, caplog):
    (tmp_path / "a-file").write_text("")
    assert not ov_backend._writable_folder(tmp_path / "a-file" / "bundle.openvino")
    assert "model cache off" in caplog.records[0].getMessage()
    assert ov_backend._writable_folder(tmp_path / "bundle.openvino") and (tmp_path / "bundle.openvino").is_dir()


def test_the_thread_cap_of_a_shared_station_reaches_openvino(tiny_built, monkeypatch):
    monkeypatch.setenv("ZSAD_EDGE_THREADS", "1")
    detector = Detector.from_bundle(tiny_built.path, backend="openvino")
    assert int(detector.encoder.compiled.get_property("INFERENCE_NUM_THREADS")) == 1


def test_info_names_the_weight_bits_of_an_int8_variant(ov_variants):
    import json
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "zsad_edge.runtime.cli", "info", str(ov_variants)], capture_output=True, text=True
    )
    precisions = json.loads(proc.stdout)["precisions"]
    assert precisions["int8"]["weight_bits"] in (7, 8) and "weight_bits" not in precisions["fp16"]
    assert precisions["int8"]["images"] == 6
