"""benchmarks/latency.py: each runtime column is named by the backend that actually ran."""

import json
import subprocess
import sys

import pytest
from helpers import REPO_ROOT


@pytest.mark.torch_side
@pytest.mark.needs_module("openvino")
def test_the_openvino_column_is_labelled_openvino(tmp_path):
    out = tmp_path / "latency.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "latency.py"), "--arch", "zsad-tiny-vit", "--image-size",
         "224", "--runs", "3", "--warmup", "1", "--backend", "openvino", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report["median_ms"]) == {"torch_eager_fp32", "openvino_fp32"}
    assert report["runtime_backend"] == "openvino" and report["runtime_providers"][0].startswith("OpenVINO CPU")
