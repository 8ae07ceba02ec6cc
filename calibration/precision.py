"""Reduced-precision ONNX graphs: INT8 as explicit Q/DQ, onnxruntime dynamic INT8, fp16.

Precision lives in the ONNX itself, so one calibration serves onnxruntime here and TensorRT on the
device (TensorRT 11 has no FP16/INT8 builder flags: it takes precision from Q/DQ nodes and fp16
tensors of a strongly typed network).

ViT rules (the anchors' issue trackers: INT8 ViTs collapse otherwise, fp16 LayerNorm overflows):
- INT8 covers only the nodes that carry weights: Conv (patch embedding) and the MatMul/Gemm of
  every linear layer, weights per output channel. LayerNorm, residual Adds, Softmax, GELU and the
  activation x activation MatMuls of attention stay in float.
- Static INT8 is symmetric (zero point 0) for weights and activations, the only form TensorRT
  accepts; activation ranges come from a folder of normal images (minmax, entropy or percentile).
- Weights use 7 bits of the int8 range (onnxruntime's reduce_range) for CPUs without an int8 dot
  product: x86 CPUs without VNNI (AVX2 only) multiply uint8 x int8 pairs into saturating int16
  sums, and with full-range weights those sums clip. Where the target has VNNI, AMX or ARM's dot
  product (runtime/cpu.py), the products accumulate in 32 bits and weights use all 8 bits
  (`weight_bits`, default: what the building CPU has; recorded in the plan). Measured by hand on
  an AVX2-only CPU, ViT-B-16 (random weights, battery_weld, quantize_dynamic with reduce_range off
  vs on; no repo script): image-embedding cosine to fp32 0.983 with 8-bit weights vs 0.9997 with
  7-bit, taps error 14.8 % vs 1.6 %, at the same speed. The Q/DQ graph stays symmetric int8, so
  TensorRT takes it as is.
- int8-dynamic (onnxruntime's CPU path, not for TensorRT) first fuses attention and GELU into
  onnxruntime's CPU operators (calibration/ort_fusion.py) and quantizes the linear layers and the
  fused attention's q/k/v projection. The patch-embedding Conv stays fp32 there: onnxruntime's
  ConvInteger took 4.8 ms against 2.2 ms for the fp32 Conv (ViT-B-16, session profile by hand).
- int8-dynamic also quantizes the heads graph's linear layers (`input_linear_layers`: those applied
  to the graph's input features, e.g. APRIL-GAN's per-tap Linear on the taps): 5.2 -> 3.6 ms for
  ViT-B-16's heads (benchmarks/precision.py). Its other constant products stay float: the text-class vectors, whose
  products are scaled by 100 before the softmax, and the bilinear upsampling matrices.
- fp16 keeps LayerNormalization, Softmax and the reductions in fp32, and the graph's inputs and
  outputs in fp32 so the runtime feeds it the same arrays.
"""

from __future__ import annotations

import io
import logging
import tempfile
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from zsad_edge.runtime.errors import ZsadEdgeError

from .ort_fusion import fuse_for_onnxruntime

PRECISIONS = ("int8", "int8-dynamic", "fp16")
WEIGHT_BITS = (7, 8)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
DYNAMIC_WEIGHT_OPS = ("MatMul", "Gemm", "Attention")
FP16_KEPT_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt")


@dataclass(frozen=True)
class QuantizationPlan:
    """What a conversion did, recorded in the manifest next to the graph."""

    precision: str
    weight_nodes: int
    kept_float_ops: tuple[str, ...]
    calibration_method: str | None = None
    calibration_images: int = 0
    fused_ops: dict[str, int] = field(default_factory=dict)
    weight_bits: int | None = None  # int8: 7 (reduce_range, for CPUs without an int8 dot product) or 8

    def to_dict(self) -> dict:
        return asdict(self)


def _import_onnx():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError:
        raise ZsadEdgeError(
            "precision conversion needs onnx and onnxruntime: pip install 'zsad-edge[cpu,export]'"
        ) from None
    return onnx, quantization


def weight_node_names(model, op_types: tuple[str, ...] = WEIGHT_OPS) -> list[str]:
    """Names of the nodes INT8 may touch: nodes of `op_types` with a weight initializer."""
    initializers = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in op_types and any(i in initializers for i in n.input[1:])]


def input_linear_layers(model) -> list[str]:
    """MatMul/Gemm nodes with a 2-D weight initializer applied to a graph input, directly or through
    Gather/Slice/Squeeze (a tap picked out of the taps tensor)."""
    initializers = {i.name: i for i in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    producers = {out: node for node in model.graph.node for out in node.output}

    def reads_graph_input(name: str) -> bool:
        node = producers.get(name)
        if node is None:
            return name in inputs
        return node.op_type in ("Gather", "Slice", "Squeeze") and reads_graph_input(node.input[0])

    return [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm")
        and len(n.input) > 1
        and n.input[1] in initializers
        and len(initializers[n.input[1]].dims) == 2
        and reads_graph_input(n.input[0])
    ]


def quantize_input_linear_layers(
    source: Path, target: Path, weight_bits: int = 7
) -> tuple[QuantizationPlan, list[str]]:
    """int8-dynamic for a heads graph: only `input_linear_layers`, weights per channel in 7 bits.
    Returns (plan, side files); a plan with weight_nodes == 0 means nothing was worth converting
    and nothing was written."""
    onnx, quantization = _import_onnx()
    model = onnx.load(str(source))
    layers = input_linear_layers(model)
    plan = QuantizationPlan("int8-dynamic", len(layers), _kept_float(model, set(layers)), weight_bits=weight_bits)
    if not layers:
        return plan, []
    with _quiet_quantizer(), tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        quantized = Path(scratch) / "quantized.onnx"
        _dynamic_int8(model, quantized, layers, quantization, weight_bits)
        return plan, save_with_external_data(onnx.load(str(quantized)), target)


def graph_precision_counts(model) -> dict[str, int]:
    """Q/DQ nodes and fp16 tensors (initializers and Casts to fp16) of an ONNX graph: the precision
    TensorRT will build it at, since precision lives in the graph (keys as runtime.trt_engine counts
    them on the parsed network)."""
    onnx, _ = _import_onnx()
    fp16 = onnx.TensorProto.FLOAT16
    return {
        "quantize": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
        "dequantize": sum(n.op_type == "DequantizeLinear" for n in model.graph.node),
        "fp16_tensors": sum(i.data_type == fp16 for i in model.graph.initializer)
        + sum(
            n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in model.graph.node
        ),
    }


def _kept_float(model, quantized: set[str]) -> tuple[str, ...]:
    return tuple(sorted({n.op_type for n in model.graph.node if n.name not in quantized}))


class _FeedReader:
    """onnxruntime's CalibrationDataReader over a list of input feeds, with the length and ranges its
    strided calibration reads them by."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._next, self._end = 0, len(feeds)
        self.count = 0

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        self.count += 1
        return self._feeds[self._next - 1]


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization warns through the root logger on every call ("consider pre-processing")
    and prints calibration progress to stdout; a build prints its own summary instead."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def save_with_external_data(model, path: Path) -> list[str]:
    """Write `path` plus one `<name>.data` side file (TensorRT parses from the path); returns the side files."""
    onnx, _ = _import_onnx()
    data_name = f"{path.name}.data"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_name,
        size_threshold=1024,
    )
    return [data_name] if (path.parent / data_name).exists() else []


def convert(
    source: Path,
    target: Path,
    precision: str,
    calibration_feeds: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
    calibration_method: str = "percentile",
    weight_bits: int = 7,
) -> tuple[QuantizationPlan, list[str]]:
    """Write `source` (fp32 ONNX) at `precision` to `target`; returns the plan and side files.

    calibration_feeds: for "int8" only, a callable returning the input feeds of normal images.
    weight_bits: int8 weights in 7 bits (any CPU) or 8 (CPUs with an int8 dot product).
    """
    if weight_bits not in WEIGHT_BITS:
        raise ZsadEdgeError(f"int8 weights come in {' or '.join(map(str, WEIGHT_BITS))} bits, not {weight_bits}")
    if precision not in PRECISIONS:
        raise ZsadEdgeError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    onnx, quantization = _import_onnx()
    model = onnx.load(str(source))
    if precision == "fp16":
        from onnxconverter_common import float16

        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(FP16_KEPT_FP32), disable_shape_infer=True
        )
        return QuantizationPlan(precision, 0, FP16_KEPT_FP32), save_with_external_data(converted, target)
    with _quiet_quantizer(), tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        quantized = Path(scratch) / "quantized.onnx"
        if precision == "int8-dynamic":
            plan = _quantize_dynamic(model, quantized, quantization, weight_bits)
        else:
            plan = _quantize_static(
                model,
                quantized,
                weight_node_names(model),
                calibration_feeds,
                calibration_method,
                quantization,
                weight_bits,
            )
        return plan, save_with_external_data(onnx.load(str(quantized)), target)


def _quantize_dynamic(model, out: Path, quantization, weight_bits: int) -> QuantizationPlan:
    fused, fused_ops = fuse_for_onnxruntime(model)
    weights = weight_node_names(fused, DYNAMIC_WEIGHT_OPS)
    _dynamic_int8(fused, out, weights, quantization, weight_bits)
    kept = _kept_float(fused, set(weights))
    return QuantizationPlan("int8-dynamic", len(weights), kept, fused_ops=fused_ops, weight_bits=weight_bits)


def _dynamic_int8(model, out: Path, nodes: list[str], quantization, weight_bits: int) -> None:
    """onnxruntime dynamic INT8 of `nodes`: int8 weights per output channel in `weight_bits` (module docstring)."""
    quantization.quantize_dynamic(
        model,
        str(out),
        nodes_to_quantize=nodes,
        per_channel=True,
        reduce_range=weight_bits == 7,
        weight_type=quantization.QuantType.QInt8,
    )


def _quantize_static(
    model, out: Path, weights: list[str], calibration_feeds, method: str, quantization, weight_bits: int
) -> QuantizationPlan:
    if method not in CALIBRATION_METHODS:
        raise ZsadEdgeError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    if calibration_feeds is None:
        raise ZsadEdgeError("int8 (static Q/DQ) needs calibration images: pass --calibration-images DIR")
    reader = _FeedReader(list(calibration_feeds()))
    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }
    # Q/DQ on the inputs of weight nodes only: a Q/DQ pair on their outputs would round every linear
    # layer's result to int8 once more before its bias and residual Adds, which stay float.
    # Calibration keeps every calibrated tensor of the images it reads at once: at 518 px (1,370
    # tokens, 16 x 1,370^2 attention scores per layer) that is gigabytes per image. So only the
    # tensors of weight-op types are calibrated (the only ones quantized: the same ranges), and one
    # image at a time, its histograms merged into the others' (onnxruntime's strided calibration).
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(WEIGHT_OPS),
        "CalibStridedMinMax": 1,
    }
    quantization.quantize_static(
        model,
        str(out),
        reader,
        quant_format=quantization.QuantFormat.QDQ,
        nodes_to_quantize=weights,
        op_types_to_quantize=list(WEIGHT_OPS),
        per_channel=True,
        reduce_range=weight_bits == 7,
        activation_type=quantization.QuantType.QInt8,
        weight_type=quantization.QuantType.QInt8,
        calibrate_method=methods[method],
        extra_options=extra,
    )
    kept = _kept_float(model, set(weights))
    return QuantizationPlan("int8", len(weights), kept, method, reader.count, weight_bits=weight_bits)
