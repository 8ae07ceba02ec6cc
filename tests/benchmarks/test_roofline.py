"""The roofline benchmark's FLOP count, on graphs whose count is known by hand."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zsad_edge.benchmarks.roofline import graph_gflop


def test_flops_of_matmul_gemm_and_conv_are_counted_at_batch_one(tmp_path):
    weight = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")  # 8 filters of 3x3x3
    projection = numpy_helper.from_array(np.zeros((8, 5), np.float32), "p")
    gemm_weight = numpy_helper.from_array(np.zeros((4, 5), np.float32), "g")  # used transposed
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # -> [N, 8, 6, 6]
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),  # -> [N, 6, 6, 8]
        helper.make_node("MatMul", ["t", "p"], ["m"]),  # [N, 6, 6, 8] @ [8, 5]
        helper.make_node("Reshape", ["m", "shape"], ["r"]),
        helper.make_node("Gemm", ["r", "g"], ["y"], transB=1),  # [36N, 5] x [5, 4]
    ]
    shape = numpy_helper.from_array(np.array([-1, 5], np.int64), "shape")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, projection, gemm_weight, shape],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    conv = 2 * (8 * 6 * 6) * (3 * 3 * 3)
    matmul = 2 * (6 * 6) * 8 * 5
    gemm = 2 * 36 * 5 * 4
    assert graph_gflop(path) * 1e9 == conv + matmul + gemm
