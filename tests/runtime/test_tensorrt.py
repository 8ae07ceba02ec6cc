"""TensorRT path without a GPU: profiles, cache keys and records, precision checks on real ONNX,
trtexec lines, refusals, and build/load/run logic against a recording stand-in for tensorrt and
cuda-python (tests/fake_tensorrt.py). TensorRT's own behaviour is unverified here (README)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_tensorrt import ENGINE_MAGIC, FakeCudart, fake_tensorrt
from helpers import REPO_ROOT

from zsad_edge.calibration.drift import DriftTolerance
from zsad_edge.calibration.precision import graph_precision_counts
from zsad_edge.calibration.variants import add_precision, load_calibration_images
from zsad_edge.export.graphs.trt_target import TRTEXEC_SCRIPT, build_trt_engines, engine_jobs, trtexec_commands
from zsad_edge.runtime.backends.components import EngineOptions, ort_tensorrt_options
from zsad_edge.runtime.backends.trt import engine as trt_engine
from zsad_edge.runtime.backends.trt import runner as trt_backend
from zsad_edge.runtime.backends.trt.engine import (
    BuildOptions,
    DeviceInfo,
    EngineCache,
    EngineError,
    EngineKey,
    check_precision,
    load_or_build,
)
from zsad_edge.runtime.backends.trt.profiles import ProfileConfig, profile_shapes, shape_string
from zsad_edge.runtime.bundle import TensorSpec, load_manifest
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import BackendUnavailableError, ZsadEdgeError

TENSORRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
DEVICE = DeviceInfo("Fake GPU", "8.7", "10.3.0")
LOOSE = DriftTolerance(min_map_pearson=0.9, min_score_spearman=None)


@pytest.fixture(scope="module")
def variant_bundle(tiny_built, normal_folder, tmp_path_factory) -> Path:
    """The tiny bundle with int8 (Q/DQ) and fp16 image-encoder variants."""
    bundle = Path(shutil.copytree(tiny_built.path, tmp_path_factory.mktemp("trt") / "bundle"))
    images = load_calibration_images([normal_folder], None)
    for precision in ("int8", "fp16"):
        add_precision(bundle, precision, images, "minmax", LOOSE)
    return bundle


@pytest.fixture
def fake_gpu(monkeypatch):
    """tensorrt and cuda-python replaced by the recording stand-ins."""
    cudart = FakeCudart()
    trt = fake_tensorrt(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for module in (trt_engine, trt_backend):
        monkeypatch.setattr(module, "import_cudart", lambda: cudart)
    monkeypatch.setattr(trt_backend, "_stream_handle", int)
    return trt, cudart


def test_profiles_cover_batch_prompts_and_points():
    config = ProfileConfig()
    image = TensorSpec("image", ["batch", 3, 224, 224], "float32")
    shapes = profile_shapes([image], config.with_max_batch(4))
    assert (shapes["image"].min, shapes["image"].opt, shapes["image"].max) == (
        (1, 3, 224, 224),
        (1, 3, 224, 224),
        (4, 3, 224, 224),
    )
    decoder = [
        TensorSpec("image_embeddings", [1, 256, 64, 64], "float32"),
        TensorSpec("point_coords", ["prompts", "points", 2], "float32"),
    ]
    shapes = profile_shapes(decoder, config)
    assert list(shapes) == ["point_coords"]  # static inputs need no profile entry
    assert shapes["point_coords"].max == (8, 16, 2) and shapes["point_coords"].opt == (1, 7, 2)
    assert shape_string(shapes, "min") == "point_coords:1x1x2"
    with pytest.raises(ZsadEdgeError, match="dynamic dimension 'tokens' with no profile range"):
        profile_shapes([TensorSpec("x", ["tokens", 8], "float32")], config)
    with pytest.raises(ZsadEdgeError, match="1 <= min <= opt <= max"):
        ProfileConfig({"batch": (2, 1, 4)})


def _key(**changes) -> EngineKey:
    base = EngineKey("image_encoder", "int8", "ab" * 32, "NVIDIA Orin", "8.7", "10.3.0", {"batch": [1, 1, 8]})
    return replace(base, **changes)


def test_engine_key_changes_with_every_field_and_names_differences():
    digests = {
        _key().digest(),
        _key(onnx_sha256="cd" * 32).digest(),
        _key(gpu_name="NVIDIA H100").digest(),
        _key(tensorrt_version="11.0.0").digest(),
        _key(precision="fp16").digest(),
        _key(compute_capability="9.0").digest(),
        _key(profile={"batch": [1, 1, 4]}).digest(),
    }
    assert len(digests) == 7 and _key().digest() == _key().digest()
    recorded = json.loads(json.dumps(_key(gpu_name="NVIDIA H100", tensorrt_version="11.0.0").__dict__))
    differences = _key().differences(recorded)
    assert len(differences) == 2
    assert "gpu_name 'NVIDIA H100' (needed: 'NVIDIA Orin')" in differences


def test_engine_cache_records_and_refuses_stale_or_corrupt_engines(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    key = _key()
    assert cache.problem(key) == "no engine built yet"
    path = cache.store(key, ENGINE_MAGIC + b"payload", {"note": "test"})
    assert cache.problem(key) is None
    assert sorted(p.name for p in cache.folder.iterdir()) == ["image_encoder.int8.engine", "image_encoder.int8.json"]
    other_gpu = cache.problem(replace(key, gpu_name="NVIDIA H100", tensorrt_version="11.0.0"))
    assert "gpu_name 'NVIDIA Orin' (needed: 'NVIDIA H100')" in other_gpu and "tensorrt_version '10.3.0'" in other_gpu
    path.write_bytes(path.read_bytes()[:-3])  # torn copy
    assert "does not match its recorded sha256" in cache.problem(key)
    cache.record_path(key).unlink()
    assert "origin is unknown" in cache.problem(key)
    assert cache.timing_cache_path(DEVICE).name == "timing-fake-gpu-sm8.7-trt10.3.0.cache"


def test_precision_is_read_from_the_onnx(variant_bundle):
    manifest = load_manifest(variant_bundle)
    counts = {
        p: graph_precision_counts(
            onnx.load(
                str(variant_bundle / manifest.with_precision(p).components["image_encoder"].file),
                load_external_data=False,
            )
        )
        for p in ("fp32", "int8", "fp16")
    }
    assert counts["fp32"] == {"quantize": 0, "dequantize": 0, "fp16_tensors": 0}
    assert counts["int8"]["quantize"] > 0 and counts["int8"]["dequantize"] >= counts["int8"]["quantize"]
    assert counts["fp16"]["fp16_tensors"] > 0 and counts["fp16"]["quantize"] == 0
    for precision, count in counts.items():
        check_precision(precision, count, "graph")
    with pytest.raises(EngineError, match="is not a int8 graph .0 Quantize"):
        check_precision("int8", counts["fp32"], "image_encoder.onnx")
    with pytest.raises(EngineError, match="is not a fp32 graph"):
        check_precision("fp32", counts["fp16"], "image_encoder.fp16.onnx")


def test_engine_jobs_share_fp32_graphs_and_write_trtexec_lines(variant_bundle):
    manifest = load_manifest(variant_bundle)
    jobs = engine_jobs(variant_bundle, manifest, ["fp32", "int8", "fp16"])
    assert [(j.component, j.precision) for j in jobs] == [
        ("image_encoder", "fp32"),
        ("heads", "fp32"),
        ("image_encoder", "int8"),
        ("image_encoder", "fp16"),
    ]
    options = EngineOptions(profile=ProfileConfig().with_max_batch(4), workspace_gb=1.5)
    lines = trtexec_commands(jobs, options, Path("/cache"))
    assert lines[2].startswith(
        f"trtexec --onnx={variant_bundle / 'image_encoder.int8.onnx'} "
        "--saveEngine=/cache/image_encoder.int8.engine --stronglyTyped "
        "--memPoolSize=workspace:1536M --timingCacheFile=/cache/timing.cache"
    )
    assert "--minShapes=image:1x3x224x224 --optShapes=image:1x3x224x224 --maxShapes=image:4x3x224x224" in lines[2]
    assert "--maxShapes=image_embedding:4x32,taps:4x4x196x64" in lines[1]
    with pytest.raises(ZsadEdgeError, match="not 'int8-dynamic' .onnxruntime's CPU format"):
        engine_jobs(variant_bundle, manifest, ["int8-dynamic"])


def test_onnxruntime_tensorrt_provider_gets_engine_cache_and_profile(variant_bundle, tmp_path):
    manifest = load_manifest(variant_bundle)
    options = ort_tensorrt_options(manifest, "heads", tmp_path, ProfileConfig().with_max_batch(3))[
        "TensorrtExecutionProvider"
    ]
    assert options["trt_engine_cache_path"] == str(tmp_path / "onnxruntime") and (tmp_path / "onnxruntime").is_dir()
    assert options["trt_profile_max_shapes"] == "image_embedding:3x32,taps:3x4x196x64"
    assert options["trt_profile_opt_shapes"] == "image_embedding:1x32,taps:1x4x196x64"


@pytest.mark.skipif(TENSORRT_INSTALLED, reason="tests the refusal where tensorrt is absent")
def test_build_without_tensorrt_refuses_but_writes_trtexec_script(variant_bundle, tmp_path):
    cache = tmp_path / "engines"
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed.*trtexec commands are in"):
        build_trt_engines(variant_bundle, ["fp32", "int8"], EngineOptions(cache_folder=cache))
    script = (cache / TRTEXEC_SCRIPT).read_text()
    assert script.startswith("#!/bin/sh") and script.count("trtexec --onnx=") == 3
    assert os.access(cache / TRTEXEC_SCRIPT, os.X_OK)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        Detector.from_bundle(variant_bundle, backend="tensorrt", engines=EngineOptions(cache_folder=cache))


def test_no_gpu_is_a_clear_refusal(fake_gpu, monkeypatch):
    monkeypatch.setattr(trt_engine, "import_cudart", lambda: FakeCudart(gpus=0))
    with pytest.raises(BackendUnavailableError, match="no usable CUDA GPU: CUDA device query failed"):
        trt_engine.current_device()


def test_build_is_strongly_typed_with_profile_workspace_and_timing_cache(fake_gpu, variant_bundle, tmp_path):
    trt, _ = fake_gpu
    options = EngineOptions(
        cache_folder=tmp_path / "engines", profile=ProfileConfig().with_max_batch(4), workspace_gb=1.0
    )
    built = build_trt_engines(variant_bundle, ["fp32", "int8"], options)
    assert [(b["component"], b["precision"]) for b in built] == [
        ("image_encoder", "fp32"),
        ("heads", "fp32"),
        ("image_encoder", "int8"),
    ]
    assert built[0]["gpu"] == "Fake GPU" and built[0]["tensorrt"] == "10.3.0"
    first, _, int8 = trt.builds
    assert first["flags"] == 1 << 1 and first["pools"] == {"workspace": 1 << 30}
    assert first["onnx"] == str(variant_bundle / "image_encoder.onnx")  # parsed from the path: external data resolves
    assert first["cleared"] == ["tf32"] and int8["cleared"] == []  # fp32 engines keep fp32 matmuls
    assert first["profile"] == {"image": ((1, 3, 224, 224), (1, 3, 224, 224), (4, 3, 224, 224))}
    assert [b["timing_cache_in"] for b in trt.builds] == [b"", b"+", b"++"]  # one cache, grown by each build
    record = json.loads((tmp_path / "engines" / "image_encoder.int8.json").read_text())
    assert record["key"]["precision"] == "int8" and record["build"]["precision_counts"]["quantize"] > 0
    build_trt_engines(variant_bundle, ["int8"], options)
    assert len(trt.builds) == 3  # cached engines are reused


def test_stale_corrupt_or_refused_engines_are_rebuilt(fake_gpu, variant_bundle, tmp_path, caplog):
    trt, _ = fake_gpu
    manifest = load_manifest(variant_bundle).with_precision("fp16")
    spec, digest = manifest.components["image_encoder"], manifest.component_digest("image_encoder")
    cache, options = EngineCache(tmp_path / "engines"), BuildOptions()

    def load(device=DEVICE, **kwargs):
        return load_or_build("image_encoder", variant_bundle, spec, digest, cache, options, device, **kwargs)

    key = load().key
    assert len(trt.builds) == 1 and load().key == key and len(trt.builds) == 1
    with caplog.at_level(logging.WARNING):
        load(replace(DEVICE, tensorrt_version="10.7.0"))  # another TensorRT: rebuilt, with the reason
    assert len(trt.builds) == 2 and "tensorrt_version '10.3.0' (needed: '10.7.0')" in caplog.text
    engine = cache.engine_path(key)
    load()  # back on 10.3.0: the 10.7.0 record stands in the way, so rebuild
    engine.write_bytes(b"garbage")
    with pytest.raises(EngineError, match="does not match its recorded sha256.*building is disabled"):
        load(allow_build=False)
    load()
    assert len(trt.builds) == 4
    cache.store(key, b"not an engine", {})  # consistent record, but TensorRT refuses the bytes
    load()
    assert len(trt.builds) == 5 and "refused to deserialize" in caplog.text
    missing = replace(spec, file="gone.onnx")
    cache.store(key, b"not an engine", {})
    with pytest.raises(EngineError, match="gone.onnx is missing"):
        load_or_build("image_encoder", variant_bundle, missing, digest, cache, options, DEVICE)


def test_tensorrt_detector_matches_onnxruntime_and_reuses_buffers(fake_gpu, variant_bundle, tmp_path, rng):
    _, cudart = fake_gpu
    engines = EngineOptions(cache_folder=tmp_path / "engines", profile=ProfileConfig().with_max_batch(2))
    trt_detector = Detector.from_bundle(variant_bundle, backend="tensorrt", precision="int8", engines=engines)
    ort_detector = Detector.from_bundle(variant_bundle, backend="cpu", precision="int8")
    assert trt_detector.providers == ["TensorRT 10.3.0"]
    images = [(rng.random((60 + 10 * i, 80, 3)) * 255).astype(np.uint8) for i in range(5)]
    allocations = cudart.allocations
    expected = ort_detector.detect_batch(images)
    for _ in range(2):  # batch 5 > profile max 2: run in chunks, same buffers every frame
        got = trt_detector.detect_batch(images)
        for g, e in zip(got, expected):
            assert abs(g.score - e.score) < 1e-5 and np.abs(g.anomaly_map - e.anomaly_map).max() < 1e-5
    assert cudart.allocations == allocations
    with pytest.raises(EngineError, match="outside the engine's profile"):
        trt_detector.encoder.run({"image": np.zeros((1, 3, 200, 200), np.float32)})


def test_build_engines_cli_engines_errors(variant_bundle, tmp_path):
    script = [sys.executable, str(REPO_ROOT / "export" / "build_engines.py")]
    wrong = subprocess.run(
        [*script, "engines", str(variant_bundle), "--precision", "int8-dynamic"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 2 and "not 'int8-dynamic'" in wrong.stderr and "Traceback" not in wrong.stderr
    if not TENSORRT_INSTALLED:
        absent = subprocess.run(
            [*script, "engines", str(variant_bundle), "--precision", "fp32", "--engine-cache", str(tmp_path / "e")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert absent.returncode == 2 and "TensorRT is not installed" in absent.stderr
        assert (tmp_path / "e" / TRTEXEC_SCRIPT).is_file()


@pytest.mark.skipif(TENSORRT_INSTALLED, reason="tests the refusal where tensorrt is absent")
def test_engines_without_tensorrt_change_nothing_and_the_script_works_from_any_folder(
    tiny_built, normal_folder, tmp_path
):
    bundle = Path(shutil.copytree(tiny_built.path, tmp_path / "bundle"))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in bundle.iterdir())
    script = [sys.executable, str(REPO_ROOT / "export" / "build_engines.py"), "engines"]
    refused = subprocess.run(
        [*script, "bundle", "--precision", "fp16", "--calibration-images", str(normal_folder)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "TensorRT is not installed" in refused.stderr and "nothing was changed" in refused.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in bundle.iterdir()) == before  # no fp16 variant added
    fp32 = subprocess.run([*script, "bundle", "--precision", "fp32"], capture_output=True, text=True, cwd=tmp_path)
    assert fp32.returncode == 2 and "trtexec commands are in" in fp32.stderr
    lines = (tmp_path / "bundle.engines" / TRTEXEC_SCRIPT).read_text().splitlines()
    paths = [arg.split("=", 1)[1] for line in lines if line.startswith("trtexec") for arg in line.split()
             if arg.startswith(("--onnx=", "--saveEngine=", "--timingCacheFile="))]  # fmt: skip
    assert len(paths) == 6 and all(Path(path).is_absolute() for path in paths)
    assert all(Path(path).is_file() for path in paths if path.endswith(".onnx"))
