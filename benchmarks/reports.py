"""Where benchmark results go and what every report records about the machine that produced it."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from zsad_edge.runtime.cpu import cpu_info

RESULTS_DIR = Path(__file__).parent / "results"


def machine_info() -> dict:
    """CPU model and instruction sets, library versions and threads: timings mean nothing without them."""
    import onnxruntime
    import torch

    cpu, flags = cpu_info()
    return {
        "cpu": cpu,
        "cpu_flags": list(flags),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_report(report: dict, out: Path | None, default_name: str) -> Path:
    """Write the JSON report to `out`, or <default_name>.json in the current folder, and say where.

    Never into the checkout by default: the stored results in benchmarks/results/ change only
    when someone passes `--out benchmarks/results/NAME.json` on purpose.
    """
    path = out or Path.cwd() / f"{default_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {path}")
    return path


def random_bundle(arch: str, image_size: int, method: str, folder: Path):
    """A random-weight bundle of `method` in `folder` (speed does not depend on weight values); the FNN
    trains on a token 200 prompt pairs for one epoch, its size and not its training deciding its speed."""
    from zsad_edge.export.build import BuildConfig, build_bundle
    from zsad_edge.export.models.clip import ClipSpec
    from zsad_edge.export.models.fnn import FnnTrainConfig, RandomWordConfig

    return build_bundle(
        BuildConfig(
            clip=ClipSpec(arch, random_init=True, image_size=image_size),
            method=method,
            out_dir=Path(folder) / "bundle",
            random_heads=True,
            fnn=FnnTrainConfig(epochs=1, words=RandomWordConfig(pairs=200)),
        )
    )
