"""Where benchmark results go and what every report records about the machine that produced it."""

from __future__ import annotations

import json
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def machine_info() -> dict:
    """CPU model, library versions and threads: timings mean nothing without them."""
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write_report(report: dict, out: Path | None, default_name: str) -> Path:
    """Write the JSON report to `out` (or results/<default_name>.json) and say where."""
    path = out or RESULTS_DIR / f"{default_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {path}")
    return path
