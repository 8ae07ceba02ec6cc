"""Backend selection: explicit GPU requests fail loudly, a missing onnxruntime names the extra."""

import sys

import pytest

from zsad_edge.runtime.backends import ort as ort_backend
from zsad_edge.runtime.errors import BackendUnavailableError, BundleError


def test_auto_takes_what_is_available_in_preference_order():
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_backend.select_providers("auto", available) == available
    assert ort_backend.select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_explicit_gpu_backend_without_provider_is_refused():
    with pytest.raises(BackendUnavailableError, match="needs CUDAExecutionProvider.*zsad-edge\\[gpu\\]"):
        ort_backend.select_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="unknown backend 'tpu'"):
        ort_backend.select_providers("tpu", ["CPUExecutionProvider"])


def test_missing_onnxruntime_names_both_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match=r"zsad-edge\[cpu\].*zsad-edge\[gpu\]"):
        ort_backend.import_onnxruntime()


def test_cpu_session_reports_bound_provider(tiny_detector):
    assert tiny_detector.providers == ["CPUExecutionProvider"]


def test_corrupt_graph_is_a_bundle_error(tmp_path):
    (tmp_path / "g.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="onnxruntime cannot load g.onnx"):
        ort_backend.OrtComponent(tmp_path / "g.onnx", backend="cpu")
