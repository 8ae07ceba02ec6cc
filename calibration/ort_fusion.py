"""Rewrite an fp32 ViT encoder into onnxruntime's fused CPU operators, ahead of dynamic INT8.

Why: dynamic INT8 only speeds up the linear layers, so what stays float sets the ceiling. With the
attention block fused into com.microsoft.Attention (which quantize_dynamic turns into QAttention:
the q/k/v projection in int8 and the attention core in one kernel) and GELU with its bias into
BiasGelu, ViT-B-16 at 224 px on this project's 2-core AVX2 CPU goes from ~125 ms to ~115 ms
(fp32: ~213 ms; encoder alone, timed by hand; benchmarks/precision.py gives the end-to-end
numbers). Fusing the residual Adds into SkipLayerNormalization made it slower here (~11 ms
against ~4 ms for LayerNorm + Add in an onnxruntime 1.32 session profile, by hand), so that
fusion stays off.

Only for the `int8-dynamic` variant: com.microsoft operators run on onnxruntime alone, and that
variant is onnxruntime-only anyway (MatMulInteger). The fp32, fp16 and Q/DQ graphs stay plain ONNX
for TensorRT.

onnxruntime's own transformer optimizer does the GELU fusion. Its attention fusions match the
graphs of Hugging Face models, not the lean attention this project exports
(export/graphs/lean_attention.py), so `fuse_self_attention` matches that pattern itself and leaves any
block alone whose pieces are used elsewhere (the surgery path of SDP, for example).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MICROSOFT_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class _AttentionMatch:
    """The nodes of one lean self-attention block, from the q/k/v projection to the merged heads."""

    projection: object  # MatMul x @ W_qkv
    nodes: tuple  # every node the fused operator replaces, projection included
    weight: str  # initializer holding W_qkv as [width, 3 * width]
    transposed_weight: np.ndarray | None  # W_qkv to add as `weight` where the graph transposes a shared one
    bias: str
    output: str
    num_heads: int


class _Graph:
    """Producer/consumer lookups over a GraphProto's nodes."""

    def __init__(self, graph) -> None:
        self.producer = {name: node for node in graph.node for name in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def produced_by(self, name: str, op_type: str):
        node = self.producer.get(name)
        if node is None or node.op_type != op_type:
            raise LookupError(f"{name} is not produced by {op_type}")
        return node

    def sole_consumer(self, name: str, op_type: str):
        consumers = self.consumers.get(name, [])
        if len(consumers) != 1 or consumers[0].op_type != op_type or name in self.outputs:
            raise LookupError(f"{name} is not used by one {op_type} only")
        return consumers[0]

    def constant(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        if name not in self.initializers:
            raise LookupError(f"{name} is not a constant")
        return numpy_helper.to_array(self.initializers[name])


def _attribute(node, name: str, default=None):
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _match_attention(g: _Graph, softmax) -> _AttentionMatch:
    """softmax(q * s @ k^T) @ v over heads split from one q/k/v projection; LookupError otherwise."""
    scores = g.produced_by(softmax.input[0], "MatMul")
    scaled_q = g.produced_by(scores.input[0], "Mul")
    k_transposed = g.produced_by(scores.input[1], "Transpose")
    weighted = g.sole_consumer(softmax.output[0], "MatMul")
    q, k, v = (g.produced_by(name, "Squeeze") for name in (scaled_q.input[0], k_transposed.input[0], weighted.input[1]))
    slices = [g.produced_by(s.input[0], "Slice") for s in (q, k, v)]
    heads_first = g.produced_by(slices[0].input[0], "Transpose")
    split_heads = g.produced_by(heads_first.input[0], "Reshape")
    biased = g.produced_by(split_heads.input[0], "Add")
    projection = g.produced_by(biased.input[0], "MatMul")
    heads_back = g.sole_consumer(weighted.output[0], "Transpose")
    merged = g.sole_consumer(heads_back.output[0], "Reshape")

    shape = g.constant(split_heads.input[1])
    if shape.size != 5 or shape[2] != 3 or _attribute(heads_first, "perm") != [2, 0, 3, 1, 4]:
        raise LookupError("not a [batch, tokens, 3, heads, head_dim] -> [3, batch, heads, tokens, head_dim] split")
    num_heads, head_dim = int(shape[3]), int(shape[4])
    if _attribute(k_transposed, "perm") != [0, 1, 3, 2] or _attribute(heads_back, "perm") != [0, 2, 1, 3]:
        raise LookupError("unexpected transposes")
    starts = [int(g.constant(s.input[1]).ravel()[0]) for s in slices]
    if starts != [0, 1, 2] or any(len(s.input) > 3 and g.constant(s.input[3]).ravel().tolist() != [0] for s in slices):
        raise LookupError("q, k, v are not slices 0, 1, 2 of the split")
    if any(len(s.input) < 2 or g.constant(s.input[1]).ravel().tolist() != [0] for s in (q, k, v)):
        raise LookupError("q, k, v are not squeezed on the split axis")
    if not math.isclose(float(g.constant(scaled_q.input[1])), head_dim**-0.5, rel_tol=1e-5):
        raise LookupError("attention scale is not 1/sqrt(head_dim)")
    if biased.input[1] not in g.initializers:
        raise LookupError("q/k/v projection without a constant bias")
    weight, transposed_weight, weight_nodes = _projection_weight(g, projection)

    nodes = (
        *weight_nodes,
        projection,
        biased,
        split_heads,
        heads_first,
        *slices,
        q,
        k,
        v,
        scaled_q,
        k_transposed,
        scores,
        softmax,
        weighted,
        heads_back,
        merged,
    )
    replaced = {id(n) for n in nodes}
    for node in nodes[:-1]:  # everything but the merged output must stay inside the block
        for name in node.output:
            if name in g.outputs or any(id(c) not in replaced for c in g.consumers.get(name, [])):
                raise LookupError(f"{name} is used outside the attention block")
    return _AttentionMatch(projection, nodes, weight, transposed_weight, biased.input[1], merged.output[0], num_heads)


def _projection_weight(g: _Graph, projection) -> tuple[str, np.ndarray | None, tuple]:
    """The projection's [width, 3 * width] weight: an initializer, or a Transpose of one. The exporter
    keeps that Transpose when the [3 * width, width] parameter is also sliced elsewhere (SDP's v-v
    path uses its value rows); the fused node then gets its own transposed copy, as onnxruntime's
    constant folding would have made anyway."""
    name = projection.input[1]
    if name in g.initializers:
        return name, None, ()
    transpose = g.produced_by(name, "Transpose")
    parameter = g.constant(transpose.input[0])
    if parameter.ndim != 2 or _attribute(transpose, "perm", [1, 0]) != [1, 0]:
        raise LookupError("q/k/v projection weight is not a 2-D transpose")
    return f"{name}_qkv", parameter.T.copy(), (transpose,)


def fuse_self_attention(model) -> int:
    """Replace each lean self-attention block by one com.microsoft.Attention node; returns how many.

    The fused node takes the projection's place in the node list: its inputs (the block input, the
    [width, 3 * width] weight and bias) exist there already, and its output is consumed only after.
    """
    from onnx import helper, numpy_helper

    g = _Graph(model.graph)
    matches = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        try:
            matches.append(_match_attention(g, softmax))
        except LookupError:
            continue
    fused = {id(m.projection): m for m in matches}
    removed = {id(n) for m in matches for n in m.nodes}
    nodes = []
    for node in model.graph.node:
        match = fused.get(id(node))
        if match is not None:
            if match.transposed_weight is not None:
                model.graph.initializer.append(numpy_helper.from_array(match.transposed_weight, match.weight))
            nodes.append(
                helper.make_node(
                    "Attention",
                    [node.input[0], match.weight, match.bias],
                    [match.output],
                    name=f"{node.name}_attention",
                    domain=MICROSOFT_DOMAIN,
                    num_heads=match.num_heads,
                )
            )
        elif id(node) not in removed:
            nodes.append(node)
    if matches:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        if not any(o.domain == MICROSOFT_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MICROSOFT_DOMAIN, 1))
    return len(matches)


def fuse_bias_gelu(model):
    """GELU (erf form) and its preceding bias Add -> BiasGelu, by onnxruntime's transformer optimizer;
    every other fusion off (SkipLayerNormalization is slower on CPU, attention is ours, and the tanh
    approximation of GELU would change the numbers). Returns the (possibly new) ModelProto."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("vit")
    for switch in (
        "enable_attention",
        "enable_skip_layer_norm",
        "enable_bias_skip_layer_norm",
        "enable_embed_layer_norm",
        "enable_gelu_approximation",
    ):
        setattr(options, switch, False)
    return optimizer.optimize_model(model, model_type="vit", optimization_options=options, opt_level=0).model


def fuse_for_onnxruntime(model) -> tuple[object, dict[str, int]]:
    """Both fusions; returns the fused ModelProto and how many nodes of each fused operator it has."""
    fused = fuse_bias_gelu(model)
    attention = fuse_self_attention(fused)
    return fused, {"Attention": attention, "BiasGelu": sum(n.op_type == "BiasGelu" for n in fused.graph.node)}
