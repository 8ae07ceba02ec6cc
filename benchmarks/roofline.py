"""How close does each backend and precision get to what this CPU can do, and to what PyTorch does here?

For one bundle (random weights: speed does not depend on their values):
1. GFLOP per image of each graph, counted from the ONNX (MatMul, Gemm, Conv; shapes inferred at
   batch 1): a multiply-add counts as 2 FLOP.
2. The machine's matrix-multiply rate: the best of torch, onnxruntime and OpenVINO on 1024x1024
   operands, fp32, and bf16 and int8 where the CPU has native support (AVX512_BF16 / AMX, VNNI /
   AMX); each engine's rate is kept in the JSON.
3. Every candidate (onnxruntime fp32 and int8 Q/DQ; OpenVINO fp32, int8 Q/DQ and bf16) timed per
   stage, interleaved in one run, through the same `Detector` a station runs, in a process that has
   not loaded torch (the bundle and its variants are made by `build_engines.py` in processes of
   their own); the encoder's achieved GFLOP/s as a fraction of the matching
   matmul rate; end-to-end speed-up over onnxruntime fp32.
4. Drift of each candidate against onnxruntime fp32 on the dataset's test images: anomaly-map
   Pearson (mean) and image-score Spearman, against the gate a reduced precision must pass here
   (Pearson >= 0.99, Spearman >= 0.98: stricter than the bundle's default admission gate).
5. The anchors a PyTorch user would run on this machine (benchmarks/torch_anchors.py: eager fp32,
   bf16 autocast where the CPU has native bf16, torch.compile with and without it), timed in
   processes of their own but interleaved with the candidates; speed-ups are over the best of them.
6. Each candidate against its FLOP floor: the encoder's GFLOP at the machine's matmul rate of the
   candidate's precision; end to end as a multiple of it, and the share of time outside the encoder.

The published configurations:

  python benchmarks/roofline.py ../shared/data/battery_weld --out benchmarks/results/roofline_ViT-B-16_224.json
  python benchmarks/roofline.py ../shared/data/battery_weld --method sdp --arch ViT-B-16-plus-240 --image-size 240
  python benchmarks/roofline.py ../shared/data/battery_weld --arch ViT-L-14-336 --image-size 518 --runs 5 \
      --max-images 12 --bundle /tmp/vitl518   # the bundle is kept for throughput.py
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report
from zsad_edge.benchmarks.torch_anchors import ANCHORS, BF16_ANCHORS, AnchorFailed, TorchAnchor
from zsad_edge.calibration.drift import drift_between, score_images
from zsad_edge.calibration.variants import load_calibration_images
from zsad_edge.runtime.backends.openvino import import_openvino, native_bf16
from zsad_edge.runtime.bench.timing import benchmark_interleaved
from zsad_edge.runtime.bundle import load_manifest
from zsad_edge.runtime.contract import APRILGAN, HEADS, IMAGE_ENCODER, MANIFEST_FILE, METHODS, method_by_option
from zsad_edge.runtime.cpu import cpu_info, int8_dot_product
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.evaluation.dataset import sample_across_defects, scan_dataset

MATMUL_SIDE = 1024
GATE_MAP_PEARSON = 0.99  # the drift a reduced precision may show and still be the published configuration's
GATE_SCORE_SPEARMAN = 0.98


def graph_gflop(path: Path) -> float:
    """GFLOP of one image through an ONNX graph: 2 x multiply-adds of its MatMul, Gemm and Conv nodes."""
    import onnx

    model = onnx.load(str(path))
    for tensor in model.graph.input:  # batch 1 (and any other symbolic dimension left as it is)
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    flop = 0
    for node in inferred.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
            if not a or not b or 0 in a or 0 in b:
                continue
            k = a[-1]
            n = b[0] if node.op_type == "Gemm" and _attribute(node, "transB") else b[-1]
            flop += 2 * int(np.prod(a[:-1])) * k * n
        elif node.op_type == "Conv":
            weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if weight and out and 0 not in out:
                flop += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
    return flop / 1e9


def _attribute(node, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def _matmul_graph(path: Path, int8: bool) -> Path:
    """x[N, N] @ w[N, N] as ONNX: plain fp32, or with Q/DQ on both operands (an int8 matmul to a runtime)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((MATMUL_SIDE, MATMUL_SIDE)).astype(np.float32)
    if int8:
        constants = {
            "wq": np.clip(np.round(weight * 20), -127, 127).astype(np.int8),
            "ws": np.array(0.05, np.float32),
            "xs": np.array(0.02, np.float32),
            "zero": np.array(0, np.int8),
        }
        nodes = [
            helper.make_node("DequantizeLinear", ["wq", "ws", "zero"], ["w"]),
            helper.make_node("QuantizeLinear", ["x", "xs", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "zero"], ["xd"]),
            helper.make_node("MatMul", ["xd", "w"], ["y"]),
        ]
    else:
        constants, nodes = {"w": weight}, [helper.make_node("MatMul", ["x", "w"], ["y"])]
    square = [MATMUL_SIDE, MATMUL_SIDE]
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, square)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, square)],
        [numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _rate(call, repeats: int = 10) -> float:
    samples = []
    for _ in range(repeats + 2):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return 2 * MATMUL_SIDE**3 / float(np.median(samples[2:])) / 1e9


def matmul_rates(folder: Path) -> dict[str, dict[str, float]]:
    """G/s of a 1024x1024 matrix multiply per precision this CPU has natively, by engine (torch,
    onnxruntime, OpenVINO). The machine's rate is the best of them: torch's BLAS reaches only
    about half of what onnxruntime's and oneDNN's kernels do on some AMD CPUs (measured here)."""
    import onnxruntime
    import torch

    flags = set(cpu_info()[1])
    x = np.random.default_rng(1).random((MATMUL_SIDE, MATMUL_SIDE), dtype=np.float32)
    core = import_openvino().Core()
    rates: dict[str, dict[str, float]] = {"fp32": {}}
    if {"avx512_bf16", "amx_bf16"} & flags:
        rates["bf16"] = {}
    if int8_dot_product():
        rates["int8"] = {}
    operand = torch.from_numpy(x)
    rates["fp32"]["torch"] = _rate(lambda: torch.matmul(operand, operand))
    if "bf16" in rates:
        half = operand.bfloat16()
        rates["bf16"]["torch"] = _rate(lambda: torch.matmul(half, half))
    if "int8" in rates:
        whole = torch.randint(-128, 127, (MATMUL_SIDE, MATMUL_SIDE), dtype=torch.int8)
        rates["int8"]["torch"] = _rate(lambda: torch._int_mm(whole, whole))
    for precision in rates:
        path = _matmul_graph(folder / f"matmul_{precision}.onnx", int8=precision == "int8")
        if precision != "bf16":
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            rates[precision]["onnxruntime"] = _rate(lambda: session.run(None, {"x": x}))
        hint = "bf16" if precision == "bf16" else "f32"
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": hint})
        request = compiled.create_infer_request()
        rates[precision]["openvino"] = _rate(lambda: request.infer({"x": x}))
    return rates


def build_with_the_cli(
    method: str, arch: str, image_size: int, dataset: Path, calibration_count: int, bundle: Path, precisions: list[str]
) -> Path:
    """The bundle and its variants made as a user makes them, in processes of their own: the process
    that times never loads torch, exactly like a station's (every variant is kept whatever its drift,
    which is reported, unless its maps are not numbers at all). A bundle already in `bundle` with all
    of `precisions` is used as it is."""
    if (bundle / MANIFEST_FILE).is_file() and set(precisions) <= set(load_manifest(bundle).precisions):
        return bundle
    build = [sys.executable, str(Path(__file__).resolve().parents[1] / "export" / "build_engines.py")]
    method_options = ["--random-heads"] if method_by_option(method).trained_heads else []
    subprocess.run(
        [*build, "--method", method, "--arch", arch, "--image-size", str(image_size), "--random-init",
         *method_options, "--out", str(bundle), "--overwrite"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*build, "add-precision", str(bundle), "--precision", *precisions, "--calibration-images",
         str(dataset / "train" / "good"), "--calibration-count", str(calibration_count),
         "--min-map-pearson", "-1", "--min-score-spearman", "-1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return bundle


def runtime_candidates(bf16: bool) -> list[tuple[str, str]]:
    """(backend, precision) of every runtime candidate: onnxruntime fp32 first (the drift reference)."""
    candidates = [("cpu", "fp32"), ("cpu", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    return candidates + ([("openvino", "bf16")] if bf16 else [])


def start_anchors(bundle: Path, names: list[str]) -> tuple[dict[str, TorchAnchor], dict[str, str]]:
    """The anchors that start here; the others by the one line that says why not."""
    started, failed = {}, {}
    for name in names:
        try:
            started[name] = TorchAnchor(bundle, name)
        except AnchorFailed as error:
            failed[name] = error.reason
            print(f"anchor left out: {error}")
    return started, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="MVTec-layout category: train/good calibrates, test/ measures drift")
    parser.add_argument(
        "--method",
        choices=[m.option for m in METHODS.values()],
        default=APRILGAN.option,
        help="APRIL-GAN is published on ViT-L-14-336 @ 518, CLIP-AD's sdp on ViT-B-16-plus-240 @ 240",
    )
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calibration-count", type=int, default=32)
    parser.add_argument("--max-images", type=int, default=60, help="test images for drift, drawn across defect types")
    parser.add_argument("--anchors", nargs="*", choices=ANCHORS, default=list(ANCHORS),
                        help="PyTorch anchors (bf16 ones only where the CPU has native bf16)")  # fmt: skip
    parser.add_argument("--bundle", type=Path, help="build the bundle here and keep it (used as it is if complete)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON path (default ./roofline_<arch>_<size>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)

    calibration = load_calibration_images([args.dataset / "train" / "good"], args.calibration_count)
    samples = [s for c in scan_dataset(args.dataset) for s in c.samples]
    test_images = [str(s.image) for s in sample_across_defects(samples, args.max_images, args.seed)]
    bf16 = native_bf16(import_openvino().Core())
    precisions = ["int8", *(["bf16"] if bf16 else [])]
    anchor_names = [a for a in args.anchors if bf16 or a not in BF16_ANCHORS]
    with tempfile.TemporaryDirectory() as scratch:
        bundle = build_with_the_cli(args.method, args.arch, args.image_size, args.dataset, args.calibration_count,
                                    args.bundle or Path(scratch) / "bundle", precisions)  # fmt: skip
        manifest = load_manifest(bundle)
        gflop = {name: graph_gflop(bundle / manifest.components[name].file) for name in (IMAGE_ENCODER, HEADS)}
        detectors = {
            f"{b}/{p}": Detector.from_bundle(bundle, backend=b, precision=p) for b, p in runtime_candidates(bf16)
        }
        anchors, anchors_failed = start_anchors(bundle, anchor_names)
        try:
            reference = score_images(detectors["cpu/fp32"], test_images)
            drift = {
                name: drift_between(reference, score_images(d, test_images))
                for name, d in {**detectors, **{a: anchors[a] for a in BF16_ANCHORS if a in anchors}}.items()
                if name != "cpu/fp32"
            }
            if "torch" in sys.modules:
                raise SystemExit("torch was imported before timing: the rows would not be the runtime's own process")
            one = [calibration[0]]
            cases = {name: (d, one) for name, d in {**detectors, **anchors}.items()}
            times = benchmark_interleaved(cases, args.runs, args.warmup, block=min(5, args.runs))
        finally:
            for anchor in anchors.values():
                anchor.close()
        engine_rates = matmul_rates(Path(scratch))  # torch is imported from here on, after every timing
        rates = {precision: max(by_engine.values()) for precision, by_engine in engine_rates.items()}
        providers = {name: d.providers for name, d in detectors.items()}

    medians = {name: t.medians() for name, t in times.items()}
    base = medians["cpu/fp32"]["end_to_end"]
    best_anchor = min(anchors, key=lambda a: medians[a]["end_to_end"])
    rows = {}
    for name, m in medians.items():
        precision = "bf16" if name in BF16_ANCHORS else name.split("/")[-1] if "/" in name else "fp32"
        rate = rates.get(precision, rates["fp32"])
        achieved = gflop[IMAGE_ENCODER] / (m["encode"] / 1e3)
        floor_ms = gflop[IMAGE_ENCODER] / rate * 1e3
        pearson = drift.get(name, {}).get("map_pearson_mean", 1.0)
        spearman_ = drift.get(name, {}).get("score_spearman", 1.0)
        rows[name] = {
            "encode_ms": m["encode"],
            "end_to_end_ms": m["end_to_end"],
            "outside_encoder_fraction": 1 - m["encode"] / m["end_to_end"],
            "speedup_vs_ort_fp32": base / m["end_to_end"],
            "speedup_vs_best_torch": medians[best_anchor]["end_to_end"] / m["end_to_end"],
            "encoder_gflop_per_s": achieved,
            "fraction_of_matmul_rate": achieved / rate,
            "matmul_rate_used": precision if precision in rates else "fp32",
            "encoder_floor_ms": floor_ms,
            "end_to_end_over_floor": m["end_to_end"] / floor_ms,
            "map_pearson_mean": pearson,
            "score_spearman": spearman_,
            "passes_drift_gate": name in ANCHORS or (pearson >= GATE_MAP_PEARSON and spearman_ >= GATE_SCORE_SPEARMAN),
        }
    encoder, heads = gflop[IMAGE_ENCODER], gflop[HEADS]
    print(f"\n{args.method}, {args.arch} @ {args.image_size}: encoder {encoder:.2f} GFLOP, heads {heads:.3f} GFLOP")
    for precision, by_engine in engine_rates.items():
        engines = ", ".join(f"{engine} {rate:.0f}" for engine, rate in by_engine.items())
        print(f"1024x1024 matmul {precision}: {engines} G/s; the machine's rate: {rates[precision]:.0f}")
    print(f"drift on {len(test_images)} test images of {args.dataset} (gate: map Pearson >= {GATE_MAP_PEARSON}, "
          f"score Spearman >= {GATE_SCORE_SPEARMAN}); batch 1, median of {args.runs}; best PyTorch anchor: "
          f"{best_anchor}\n")  # fmt: skip
    print(format_rows(rows))
    report = {
        "benchmark": "roofline",
        "method": args.method,
        "arch": args.arch,
        "image_size": args.image_size,
        "dataset": str(args.dataset),
        "test_images": len(test_images),
        "runs": args.runs,
        "gflop_per_image": gflop,
        "matmul_rates_gflop_per_s": rates,
        "matmul_rates_by_engine": engine_rates,
        "drift_gate": {"min_map_pearson": GATE_MAP_PEARSON, "min_score_spearman": GATE_SCORE_SPEARMAN},
        "best_torch_anchor": best_anchor,
        "anchors_left_out": anchors_failed,
        "providers": providers,
        "candidates": rows,
        "median_ms": medians,
        "iqr_ms": {name: t.spreads() for name, t in times.items()},
        "drift_vs_ort_fp32": drift,
        "machine": machine_info(),
    }
    write_report(report, args.out, f"roofline_{args.arch}_{args.image_size}")
    return 0


def format_rows(rows: dict[str, dict]) -> str:
    """The markdown table of every candidate and anchor."""
    columns = ["encode ms", "end-to-end ms", "outside encoder", "x floor", "of matmul rate", "vs best torch",
               "map Pearson", "score Spearman", "gate"]  # fmt: skip
    lines = ["| candidate | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, r in rows.items():
        gate = "anchor" if name in ANCHORS else "pass" if r["passes_drift_gate"] else "FAIL"
        cells = [
            f"{r['encode_ms']:.1f}",
            f"{r['end_to_end_ms']:.1f}",
            f"{100 * r['outside_encoder_fraction']:.0f} %",
            f"{r['end_to_end_over_floor']:.2f}x",
            f"{100 * r['fraction_of_matmul_rate']:.0f} % ({r['matmul_rate_used']})",
            f"{r['speedup_vs_best_torch']:.2f}x",
            f"{r['map_pearson_mean']:.4f}",
            f"{r['score_spearman']:.4f}",
            gate,
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
