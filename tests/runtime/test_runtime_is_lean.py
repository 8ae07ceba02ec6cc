"""The runtime must import and run without torch, open_clip or segment_anything."""

import ast
import subprocess
import sys

from helpers import REPO_ROOT

RUNTIME = REPO_ROOT / "runtime"
FORBIDDEN = {"torch", "open_clip", "segment_anything", "torchvision"}


def test_no_torch_side_import_statement_under_runtime():
    offenders = []
    for path in RUNTIME.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_runtime_runs_a_bundle_in_a_fresh_interpreter_without_loading_torch(tiny_built):
    code = (
        "import sys, numpy as np\n"
        "import zsad_edge.runtime.cli, zsad_edge.runtime.overlay\n"
        "from zsad_edge.runtime.detector import Detector\n"
        f"d = Detector.from_bundle({str(tiny_built.path)!r}, backend='cpu')\n"
        "r = d(np.zeros((50, 70), np.uint8))\n"
        "assert r.anomaly_map.shape == (50, 70)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in %r)\n"
        "print('LOADED', bad)\n" % sorted(FORBIDDEN)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout
