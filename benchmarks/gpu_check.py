"""The GPU run: TensorRT engines, parity against torch on CUDA, and every way to run the model there, timed.

For ViT-B-16 @ 224 and then ViT-L-14-336 @ 518 (APRIL-GAN, random weights: speed and parity do
not depend on their values), on the first NVIDIA GPU:
1. The bundle, its fp16 and int8 variants (int8 calibrated on the dataset's normal images).
2. TensorRT engines fp32, fp16 and int8, built through the runtime (`--backend tensorrt`).
3. Parity against the PyTorch reference on CUDA in fp32, on the dataset's test images: fp32 paths
   within PARITY_MAX_ERROR of the map range; fp16 and int8 within the drift gate (map Pearson
   >= 0.99, score Spearman >= 0.98).
4. Interleaved timing, batch 1: torch eager fp32 and fp16 autocast, torch.compile (both), and the
   runtime on onnxruntime's CUDA provider (fp32), onnxruntime's TensorRT provider (fp16) and
   native TensorRT (fp32, fp16, int8).
The JSON is rewritten after each architecture, so a run cut short keeps what it finished; steps
that would start after `--budget-s` are left out and named in it. Needs the `export`, `gpu` and
`trt` extras (onnxruntime-gpu, not onnxruntime) and the CUDA build of torch:

  pip install -e '.[export,gpu,trt]'
  python benchmarks/gpu_check.py ../shared/data/battery_weld --out benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

CONFIGURATIONS = (("ViT-B-16", 224), ("ViT-L-14-336", 518))
PARITY_MAX_ERROR = 1e-2  # of the map's range; TensorRT may run fp32 matmuls in TF32, which torch does not


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="MVTec-layout category: train/good calibrates, test/ checks parity")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calibration-count", type=int, default=8)
    parser.add_argument(
        "--calibration-method",
        default="minmax",
        help="int8 calibration; minmax fits the budget at 518 px, where percentile takes about 1.5 min per image "
        "on one core; the parity gate judges the result either way",
    )
    parser.add_argument("--max-images", type=int, default=16, help="test images for parity and drift")
    parser.add_argument("--budget-s", type=float, default=420, help="start no step after this many seconds")
    parser.add_argument("--out", type=Path, help="JSON path (default ./gpu_check.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    problem = missing_gpu_stack()
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    report = {"benchmark": "gpu_check", "configurations": {}, "left_out": []}
    with tempfile.TemporaryDirectory() as scratch:
        for arch, size in CONFIGURATIONS:
            key = f"{arch}@{size}"
            report["configurations"][key] = check_configuration(arch, size, args, Path(scratch), started, report)
            save(report, args.out)
    return 0 if all(c.get("parity_passed", False) for c in report["configurations"].values()) else 1


def missing_gpu_stack() -> str | None:
    """What this machine lacks for the GPU run, as the one line that says how to get it; None if nothing."""
    try:
        import torch
    except ImportError:
        return "torch is not installed: pip install -e '.[export,gpu,trt]'"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch: run this on a machine with an NVIDIA GPU and the CUDA build of torch"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT's Python package is missing: pip install -e '.[trt]'"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDA provider: pip uninstall onnxruntime && pip install -e '.[gpu]'"
    return None


def check_configuration(arch: str, size: int, args, scratch: Path, started: float, report: dict) -> dict:
    """Build, gate and time one architecture; every step after the budget is recorded as left out."""
    import torch

    from zsad_edge.benchmarks.reports import random_bundle
    from zsad_edge.benchmarks.torch_anchors import sped_up_reference
    from zsad_edge.calibration.drift import DriftTolerance, drift_between, score_images
    from zsad_edge.calibration.variants import add_precision, load_calibration_images
    from zsad_edge.runtime.backends.components import EngineOptions
    from zsad_edge.runtime.bench.timing import benchmark_interleaved
    from zsad_edge.runtime.contract import APRILGAN
    from zsad_edge.runtime.detector import Detector
    from zsad_edge.runtime.evaluation.dataset import sample_across_defects, scan_dataset

    def in_budget(step: str) -> bool:
        if time.monotonic() - started < args.budget_s:
            return True
        report["left_out"].append(f"{arch}@{size}: {step} (past --budget-s {args.budget_s:.0f})")
        return False

    result: dict = {"seconds": {}}
    mark = time.monotonic()
    built = random_bundle(arch, size, APRILGAN.option, scratch / f"{arch}_{size}")
    calibration = load_calibration_images([args.dataset / "train" / "good"], args.calibration_count)
    judged_later = DriftTolerance(min_map_pearson=None, min_score_spearman=None)  # by the parity step, on CUDA
    add_precision(built.path, "fp16", calibration, tolerance=judged_later)
    add_precision(built.path, "int8", calibration, args.calibration_method, judged_later)
    result["calibration"] = {"images": len(calibration), "method": args.calibration_method}
    result["seconds"]["bundle_and_variants"] = time.monotonic() - mark
    samples = [s for c in scan_dataset(args.dataset) for s in c.samples]
    images = [str(s.image) for s in sample_across_defects(samples, args.max_images, 0)]
    reference = built.reference_detector(device="cuda")

    engines = EngineOptions(cache_folder=scratch / f"{arch}_{size}.engines")
    candidates = {}
    for precision in ("fp32", "fp16", "int8"):
        if in_budget(f"TensorRT {precision} engine"):
            mark = time.monotonic()
            candidates[f"tensorrt/{precision}"] = Detector.from_bundle(
                built.path, backend="tensorrt", precision=precision, engines=engines
            )
            result["seconds"][f"tensorrt_{precision}_build"] = time.monotonic() - mark
    candidates["ort-cuda/fp32"] = Detector.from_bundle(built.path, backend="cuda")
    if in_budget("onnxruntime TensorRT provider fp16"):
        mark = time.monotonic()
        candidates["ort-tensorrt/fp16"] = Detector.from_bundle(
            built.path, backend="ort-tensorrt", precision="fp16", engines=engines
        )
        candidates["ort-tensorrt/fp16"].score_batch(images[:1])  # the provider builds its engine on first run
        result["seconds"]["ort_tensorrt_fp16_build"] = time.monotonic() - mark

    expected = score_images(reference, images)
    drift = {name: drift_between(expected, score_images(detector, images)) for name, detector in candidates.items()}
    result["parity"] = drift
    result["parity_passed"] = all(passes(name, d) for name, d in drift.items())

    half = torch.float16
    anchors = {
        "torch_eager_fp32": reference,
        "torch_autocast_fp16": sped_up_reference(built.reference_detector("cuda"), half, compiled=False),
    }
    for name, autocast in (("torch_compile_fp32", None), ("torch_compile_autocast_fp16", half)):
        if in_budget(name):
            mark = time.monotonic()
            anchors[name] = sped_up_reference(built.reference_detector("cuda"), autocast, compiled=True)
            anchors[name].score_batch(images[:1])  # compiles
            result["seconds"][f"{name}_compile"] = time.monotonic() - mark
    one = [calibration[0]]
    times = benchmark_interleaved(
        {name: (d, one) for name, d in {**anchors, **candidates}.items()}, args.runs, args.warmup
    )
    medians = {name: t.medians() for name, t in times.items()}
    best = min(anchors, key=lambda a: medians[a]["end_to_end"])
    result["best_torch_anchor"] = best
    result["median_ms"] = medians
    result["iqr_ms"] = {name: t.spreads() for name, t in times.items()}
    result["speedup_vs_best_torch"] = {
        name: medians[best]["end_to_end"] / m["end_to_end"] for name, m in medians.items()
    }
    result["providers"] = {name: d.providers for name, d in candidates.items()}
    print_configuration(arch, size, result)
    return result


def passes(name: str, drift: dict) -> bool:
    """fp32 paths must match torch closely; reduced precisions must pass the roofline's drift gate."""
    from zsad_edge.benchmarks.roofline import GATE_MAP_PEARSON, GATE_SCORE_SPEARMAN

    if name.endswith("/fp32"):
        return drift["map_max_error_of_range"] <= PARITY_MAX_ERROR
    return drift["map_pearson_mean"] >= GATE_MAP_PEARSON and drift["score_spearman"] >= GATE_SCORE_SPEARMAN


def print_configuration(arch: str, size: int, result: dict) -> None:
    print(f"\n{arch} @ {size}: batch 1, median ms; best PyTorch anchor {result['best_torch_anchor']}\n")
    print("| case | encode | end to end | vs best torch | map max error | map Pearson | score Spearman |")
    print("|---|---|---|---|---|---|---|")
    for name, medians in result["median_ms"].items():
        drift = result["parity"].get(name)
        checks = (
            f"{drift['map_max_error_of_range']:.2e} | {drift['map_pearson_mean']:.4f} | {drift['score_spearman']:.4f}"
            if drift
            else "reference | | "
        )
        print(
            f"| {name} | {medians['encode']:.2f} | {medians['end_to_end']:.2f} | "
            f"{result['speedup_vs_best_torch'][name]:.2f}x | {checks} |"
        )


def save(report: dict, out: Path | None) -> None:
    from zsad_edge.benchmarks.reports import machine_info, write_report

    write_report({**report, "machine": machine_info()}, out, "gpu_check")


if __name__ == "__main__":
    sys.exit(main())
