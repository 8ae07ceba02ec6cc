"""Does a fused attention operator pay on this CPU? One ViT layer's self-attention, three ways.

For the token count of a published configuration (ViT-L-14-336 @ 518: 1,370 tokens, 16 heads of
64; ViT-B-16 @ 224: 197 tokens, 12 heads of 64), the same arithmetic as one ONNX graph each:
- `unfused`: MatMul(Q, K^T) x scale, Softmax, MatMul(., V): what the exported encoders hold today;
  it materialises heads x tokens x tokens scores;
- `onnx Attention`: the standard operator (opset 23), where this onnxruntime implements it;
- `ms MultiHeadAttention`: onnxruntime's contrib operator (its CPU kernel can run a flash-style
  loop that never holds the whole score matrix);
timed interleaved in onnxruntime (CPU provider), and the unfused graph in OpenVINO fp32 and bf16
(where native), whose transformations may fuse the pattern by themselves (the kernel it chose is
reported). Outputs are checked against numpy before timing.

  python benchmarks/attention_kernels.py
  python benchmarks/attention_kernels.py --tokens 1370 --heads 16 --runs 30 \
      --out benchmarks/results/attention_kernels_1370.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report
from zsad_edge.runtime.backends.openvino import import_openvino, native_bf16

HEAD_DIM = 64


def unfused_graph(heads: int, tokens: int):
    from onnx import TensorProto, helper

    shape = [1, heads, tokens, HEAD_DIM]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "qkv"]
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [HEAD_DIM**-0.5])
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["raw"]),
        helper.make_node("Mul", ["raw", "scale"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["out"]),
    ]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "unfused", inputs, [output], initializer=[scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def onnx_attention_graph(heads: int, tokens: int):
    from onnx import TensorProto, helper

    shape = [1, heads, tokens, HEAD_DIM]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "qkv"]
    node = helper.make_node("Attention", ["q", "k", "v"], ["out"], scale=HEAD_DIM**-0.5)
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)
    graph = helper.make_graph([node], "attention", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def multi_head_attention_graph(heads: int, tokens: int):
    """com.microsoft.MultiHeadAttention on [1, tokens, heads x 64] (the layout before the head split)."""
    from onnx import TensorProto, helper

    shape = [1, tokens, heads * HEAD_DIM]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in "qkv"]
    node = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft", num_heads=heads, scale=HEAD_DIM**-0.5
    )
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)
    graph = helper.make_graph([node], "mha", inputs, [output])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    scores = (q @ k.transpose(0, 1, 3, 2)) * HEAD_DIM**-0.5
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)) @ v


def to_tokens(x: np.ndarray) -> np.ndarray:
    """[1, heads, tokens, 64] -> [1, tokens, heads x 64]"""
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1))


def candidates(heads: int, tokens: int, folder: Path) -> dict:
    """name -> (run callable, its output in [1, heads, tokens, 64]) for every variant this machine runs."""
    import onnx
    import onnxruntime

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, heads, tokens, HEAD_DIM)).astype(np.float32) for _ in range(3))
    feeds = {"q": q, "k": k, "v": v}
    token_feeds = {name: to_tokens(value) for name, value in feeds.items()}
    want = reference(q, k, v)
    found, refused = {}, {}
    graphs = {
        "onnxruntime unfused": (unfused_graph(heads, tokens), feeds, False),
        "onnxruntime onnx Attention": (onnx_attention_graph(heads, tokens), feeds, False),
        "onnxruntime ms MultiHeadAttention": (multi_head_attention_graph(heads, tokens), token_feeds, True),
    }
    for name, (model, inputs, token_layout) in graphs.items():
        path = folder / f"{name.replace(' ', '_')}.onnx"
        onnx.save(model, str(path))
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, inputs)[0]
        except Exception as exc:  # noqa: BLE001  (an operator this onnxruntime lacks is reported, not fatal)
            refused[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        if token_layout:
            got = got.reshape(1, tokens, heads, HEAD_DIM).transpose(0, 2, 1, 3)
        found[name] = (lambda session=session, inputs=inputs: session.run(None, inputs), got)
    core = import_openvino().Core()
    hints = ["f32", *(["bf16"] if native_bf16(core) else [])]
    for hint in hints:
        compiled = core.compile_model(core.read_model(str(folder / "onnxruntime_unfused.onnx")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": "YES"})  # fmt: skip
        request = compiled.create_infer_request()
        got = request.infer(feeds)[0]
        kernels = sorted(
            {f"{i.node_type}/{i.exec_type}" for i in request.get_profiling_info() if i.status.name != "NOT_RUN"}
        )
        found[f"openvino unfused {hint} ({', '.join(kernels)})"] = (lambda r=request: r.infer(feeds), got)
    errors = {name: float(np.abs(got - want).max() / np.abs(want).max()) for name, (_, got) in found.items()}
    return {"runs": {name: call for name, (call, _) in found.items()}, "errors": errors, "refused": refused}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1370, help="1370: ViT-L-14-336 @ 518; 197: ViT-B-16 @ 224")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON path (default ./attention_kernels.json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        found = candidates(args.heads, args.tokens, Path(scratch))
        calls = found["runs"]
        for call in calls.values():
            for _ in range(args.warmup):
                call()
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.runs):  # interleaved: every candidate once per round
            for name, call in calls.items():
                began = time.perf_counter()
                call()
                samples[name].append(1e3 * (time.perf_counter() - began))
    flop = 4 * args.heads * args.tokens * args.tokens * HEAD_DIM  # two matrix multiplies
    rows = {}
    print(f"\none self-attention: {args.heads} heads x {args.tokens} tokens x {HEAD_DIM}, {flop / 1e9:.2f} GFLOP")
    for name, values in samples.items():
        median = float(np.median(values))
        rows[name] = {
            "median_ms": median, "p25_ms": float(np.percentile(values, 25)), "p75_ms": float(np.percentile(values, 75)),
            "gflop_per_s": flop / median / 1e6, "max_error_of_range": found["errors"][name],
        }  # fmt: skip
        print(f"  {name:60s} {median:8.2f} ms  {flop / median / 1e6:6.1f} GFLOP/s  error {found['errors'][name]:.1e}")
    for name, reason in found["refused"].items():
        print(f"  {name:60s} not run: {reason}")
    report = {
        "benchmark": "attention_kernels",
        "arguments": {key: str(value) for key, value in vars(args).items()},
        "gflop": flop / 1e9,
        "candidates": rows,
        "refused": found["refused"],
        "machine": machine_info(),
    }
    write_report(report, args.out, "attention_kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
