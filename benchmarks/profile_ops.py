"""Where the image encoder's time goes, operator by operator, in onnxruntime and OpenVINO.

For one bundle's image_encoder.onnx at batch 1 (random weights: speed does not depend on their
values), after warm-up, over --runs runs:
- onnxruntime (CPU provider, the graph optimisation level the runtime uses): its own profiler's
  per-node kernel times, summed by operator type;
- OpenVINO CPU, fp32, and bf16 where the CPU computes bf16 natively: its per-node performance
  counters (PERF_COUNT), summed by the type of the node it executed and by the kernel it chose.
onnxruntime's matrix multiplies are split in two: those with a weight operand (the linear layers)
and those whose both operands are activations (attention: scores = Q K^T and the weighted sum of
V), so the table shows what attention costs beside the linear layers; OpenVINO names its own
(FullyConnected: the linear layers; attention runs as MatMul / Softmax nodes or a fused
Subgraph). Each row gives ms per image and its share; the
encoder's GFLOP (from the graph) over its median time is compared with the machine's 1024^2 matrix
multiply rate of that precision (benchmarks/roofline.py).

  python benchmarks/profile_ops.py --arch ViT-B-16 --image-size 224
  python benchmarks/profile_ops.py --arch ViT-L-14-336 --image-size 518 --runs 3 \\
      --out benchmarks/results/profile_ops_ViT-L-14-336_518.json
  python benchmarks/profile_ops.py --bundle bundles/weld        # a bundle that exists
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report
from zsad_edge.benchmarks.roofline import graph_gflop, matmul_rates
from zsad_edge.runtime.backends.openvino import import_openvino, native_bf16
from zsad_edge.runtime.bundle import load_manifest
from zsad_edge.runtime.contract import IMAGE_ENCODER

TOP_NODES = 15


def build(arch: str, image_size: int, folder: Path) -> Path:
    """A random-weight APRIL-GAN bundle, built by the CLI in a process of its own (this one stays
    free of torch's threads while it times)."""
    bundle = folder / "bundle"
    build_engines = Path(__file__).resolve().parents[1] / "export" / "build_engines.py"
    subprocess.run(
        [sys.executable, str(build_engines), "--method", "aprilgan", "--arch", arch, "--image-size", str(image_size),
         "--random-init", "--random-heads", "--out", str(bundle)],
        check=True, capture_output=True,
    )  # fmt: skip
    return bundle


def ort_kind(event: dict) -> str:
    """An onnxruntime node's operator type; a matrix multiply whose second operand is an activation
    of rank 3 or more multiplies two activations (attention); otherwise it applies a weight (the
    profiler lists only the inputs that are not initializers)."""
    op = event["args"].get("op_name", "?")
    if op in ("MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "QLinearMatMul"):
        shapes = [next(iter(entry.values())) for entry in event["args"].get("input_type_shape", [])]
        two_activations = len(shapes) >= 2 and len(shapes[1]) >= 3  # initializers are not listed
        return f"{op} ({'activations' if two_activations else 'weights'})"
    return op


def image_input(path: Path) -> tuple[str, np.ndarray]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tensor = model.graph.input[0]
    dims = [d.dim_value or 1 for d in tensor.type.tensor_type.shape.dim]
    return tensor.name, np.random.default_rng(0).standard_normal(dims).astype(np.float32)


def profile_onnxruntime(path: Path, runs: int, warmup: int, folder: Path) -> dict:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort_profile")
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, image = image_input(path)
    times = []
    for _ in range(warmup + runs):
        began = time.perf_counter()
        session.run(None, {name: image})
        times.append(time.perf_counter() - began)
    events = json.loads(Path(session.end_profiling()).read_text())
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[warmup:]
    by_kind: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= event["ts"] <= end for start, end in windows):
            continue
        node = event["name"][: -len("_kernel_time")]
        kind = ort_kind(event)
        by_kind[kind] += event["dur"] / 1e3 / runs
        by_node[f"{node} [{kind}]"] += event["dur"] / 1e3 / runs
    return _report("onnxruntime fp32", times[warmup:], by_kind, by_node)


def profile_openvino(path: Path, runs: int, warmup: int, hint: str) -> dict:
    core = import_openvino().Core()
    config = {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": hint}
    request = core.compile_model(core.read_model(str(path)), "CPU", config).create_infer_request()
    name, image = image_input(path)
    times = []
    by_kind: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    for index in range(warmup + runs):
        began = time.perf_counter()
        request.infer({name: image})
        times.append(time.perf_counter() - began)
        if index < warmup:
            continue
        for info in request.get_profiling_info():
            ms = info.real_time.total_seconds() * 1e3 / runs
            by_kind[info.node_type] += ms
            by_kernel[f"{info.node_type} / {info.exec_type}"] += ms
            by_node[f"{info.node_name} [{info.node_type}]"] += ms
    report = _report(f"openvino {hint}", times[warmup:], by_kind, by_node)
    report["by_kernel_ms"] = _sorted(by_kernel)
    return report


def _sorted(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in sorted(values.items(), key=lambda item: -item[1])}


def _report(label: str, times: list[float], by_kind: dict[str, float], by_node: dict[str, float]) -> dict:
    return {
        "candidate": label,
        "encoder_ms": {"median": 1e3 * float(np.median(times)), "min": 1e3 * min(times), "max": 1e3 * max(times)},
        "profiled_ms": round(sum(by_kind.values()), 3),
        "by_kind_ms": _sorted(by_kind),
        "top_nodes_ms": dict(list(_sorted(by_node).items())[:TOP_NODES]),
    }


def print_report(report: dict, gflop: float, rate: float | None) -> None:
    median = report["encoder_ms"]["median"]
    achieved = gflop / (median / 1e3)
    share = f", {100 * achieved / rate:.0f} % of the {rate:.0f} G/s matmul rate" if rate else ""
    print(f"\n{report['candidate']}: encoder {median:.1f} ms ({achieved:.0f} GFLOP/s{share})")
    total = report["profiled_ms"] or 1.0
    for kind, ms in list(report["by_kind_ms"].items())[:12]:
        print(f"  {kind:34s} {ms:9.1f} ms  {100 * ms / total:5.1f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="profile this bundle's encoder (else a random one is built)")
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, help="JSON path (default ./profile_ops_<arch>_<size>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = args.bundle or build(args.arch, args.image_size, Path(scratch))
        manifest = load_manifest(bundle)
        encoder = bundle / manifest.components[IMAGE_ENCODER].file
        gflop = graph_gflop(encoder)
        rates = {precision: max(engines.values()) for precision, engines in matmul_rates(Path(scratch)).items()}
        reports = [profile_onnxruntime(encoder, args.runs, args.warmup, Path(scratch))]
        reports.append(profile_openvino(encoder, args.runs, args.warmup, "f32"))
        if native_bf16(import_openvino().Core()):
            reports.append(profile_openvino(encoder, args.runs, args.warmup, "bf16"))
    size = manifest.preprocess.input_size
    print(f"\nimage encoder of {manifest.clip.get('architecture', args.arch)} @ {size[0]}: {gflop:.1f} GFLOP per image")
    for report in reports:
        rate = rates.get("bf16" if report["candidate"].endswith("bf16") else "fp32")
        report["gflop_per_s"] = gflop / (report["encoder_ms"]["median"] / 1e3)
        report["fraction_of_matmul_rate"] = report["gflop_per_s"] / rate if rate else None
        print_report(report, gflop, rate)
    name = f"profile_ops_{manifest.clip.get('architecture', args.arch)}_{size[0]}"
    result = {
        "benchmark": "profile_ops",
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "encoder_gflop": gflop,
        "matmul_rates_gflop_per_s": rates,
        "candidates": reports,
        "machine": machine_info(),
    }
    write_report(result, args.out, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
