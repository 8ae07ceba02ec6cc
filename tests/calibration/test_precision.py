"""Precision variants: graph rules (Q/DQ placement, fp32 islands), drift numbers, gate, bundle and CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import run_onnx, write_image
from onnx import numpy_helper

from zsad_edge.calibration.drift import DriftTolerance, measure_drift
from zsad_edge.calibration.ort_fusion import fuse_for_onnxruntime, fuse_self_attention
from zsad_edge.calibration.precision import (
    convert,
    input_linear_layers,
    quantize_input_linear_layers,
    weight_node_names,
)
from zsad_edge.calibration.variants import add_precision, load_calibration_images
from zsad_edge.runtime.bundle import load_manifest
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import BundleError, ParityError, ZsadEdgeError
from zsad_edge.runtime.preprocess import preprocess_batch

LOOSE = DriftTolerance(min_map_pearson=0.9, min_score_spearman=None)  # random tiny weights: scores are noise


@pytest.fixture
def bundle(tiny_built, tmp_path) -> Path:
    """A private copy of the session's tiny bundle, so variants never leak into other tests."""
    return Path(shutil.copytree(tiny_built.path, tmp_path / "bundle"))


def _feeds(bundle: Path, images):
    spec = load_manifest(bundle).preprocess
    return lambda: ({"image": preprocess_batch([im], spec)} for im in images)


def test_int8_qdq_graph_quantizes_only_weight_nodes_symmetrically(bundle, normal_folder, tmp_path):
    images = load_calibration_images([normal_folder], None)
    source = bundle / "image_encoder.onnx"
    plan, side_files = convert(source, tmp_path / "enc.int8.onnx", "int8", _feeds(bundle, images), "minmax")
    model = onnx.load(str(tmp_path / "enc.int8.onnx"))
    fp32_weights = weight_node_names(onnx.load(str(source)))
    assert plan.weight_nodes == len(fp32_weights) > 0 and plan.calibration_images == len(images)
    assert side_files == ["enc.int8.onnx.data"]
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "Add", "Erf"):  # ViT rules: these stay float
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input), (
                node.name
            )
    dequantized_consumers = {
        n.op_type
        for n in model.graph.node
        if any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)
    }
    assert dequantized_consumers <= {"MatMul", "Conv", "Gemm", "Shape"}  # Shape reads no values
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quantize_nodes
    for node in quantize_nodes:  # TensorRT takes symmetric int8 only: every zero point is 0
        zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
        assert zero_point is None or (zero_point.dtype == np.int8 and not zero_point.any())
    int8_weights = [v for v in initializers.values() if v.dtype == np.int8 and v.ndim >= 2]
    assert int8_weights and all(w.min() >= -64 and w.max() <= 64 for w in int8_weights)  # 7-bit (reduce_range)


def test_fp16_graph_keeps_layernorm_and_io_in_fp32(bundle, tmp_path):
    plan, _ = convert(bundle / "image_encoder.onnx", tmp_path / "enc.fp16.onnx", "fp16")
    model = onnx.load(str(tmp_path / "enc.fp16.onnx"))
    types = {i.name: i.data_type for i in model.graph.initializer}
    by_output = {out: node for node in model.graph.node for out in node.output}
    matmul_weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in types]
    assert matmul_weights and all(types[w] == onnx.TensorProto.FLOAT16 for w in matmul_weights)
    for node in (n for n in model.graph.node if n.op_type == "LayerNormalization"):
        # scale and bias stay fp32, and the activation reaches it through a Cast back to fp32
        assert all(types[i] == onnx.TensorProto.FLOAT for i in node.input[1:] if i in types)
        assert by_output[node.input[0]].op_type == "Cast"
    assert "LayerNormalization" in plan.kept_float_ops
    assert all(
        t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in [*model.graph.input, *model.graph.output]
    )


def test_onnxruntime_fusions_are_exact_and_int8_dynamic_quantizes_the_fused_attention(bundle, rng, tmp_path):
    source = bundle / "image_encoder.onnx"
    layers = 4  # zsad-tiny-vit
    fused, counts = fuse_for_onnxruntime(onnx.load(str(source)))
    assert counts == {"Attention": layers, "BiasGelu": layers}
    assert not [n for n in fused.graph.node if n.op_type in ("Softmax", "Erf")]  # nothing left unfused
    image = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    for got, want in zip(run_onnx(fused, {"image": image}), run_onnx(source, {"image": image})):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()

    plan, _ = convert(source, tmp_path / "enc.int8-dynamic.onnx", "int8-dynamic")
    quantized = onnx.load(str(tmp_path / "enc.int8-dynamic.onnx"))
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("QAttention") == layers and "Conv" in ops and "ConvInteger" not in ops  # Conv stays fp32
    assert plan.fused_ops == counts and plan.weight_nodes == layers * 4 + 1  # qkv, out, fc1, fc2 per layer + proj
    for got, want in zip(run_onnx(quantized, {"image": image}), run_onnx(source, {"image": image})):
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_attention_fusion_leaves_a_block_alone_when_its_pieces_are_used_elsewhere(bundle, rng):
    model = onnx.load(str(bundle / "image_encoder.onnx"))
    first_softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(onnx.helper.make_tensor_value_info(first_softmax.output[0], onnx.TensorProto.FLOAT, None))
    assert fuse_self_attention(model) == 3  # of 4 blocks: the one whose attention weights leave the graph stays
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == 1
    image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    got, want = run_onnx(model, {"image": image}), run_onnx(bundle / "image_encoder.onnx", {"image": image})
    for a, b in zip(got, want):  # the extra output comes last
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_heads_int8_takes_only_the_linear_layers_on_the_taps(bundle, rng, tmp_path):
    source = bundle / "heads.onnx"
    model = onnx.load(str(source))
    layers = input_linear_layers(model)
    initializers = {i.name: list(i.dims) for i in model.graph.initializer}
    weights = sorted(initializers[n.input[1]] for n in model.graph.node if n.name in layers)
    assert weights == [[64, 32]] * 4  # one Linear(width 64 -> embed 32) per tap; text vectors and upsampling stay float
    plan, _ = quantize_input_linear_layers(source, tmp_path / "heads.int8-dynamic.onnx")
    assert plan.weight_nodes == 4
    quantized = onnx.load(str(tmp_path / "heads.int8-dynamic.onnx"))
    assert sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in quantized.graph.node) == 4
    feeds = {
        "image_embedding": rng.standard_normal((2, 32)).astype(np.float32),
        "taps": rng.standard_normal((2, 4, 196, 64)).astype(np.float32),
    }
    (got_map, got_score), (want_map, want_score) = (
        run_onnx(tmp_path / "heads.int8-dynamic.onnx", feeds),
        run_onnx(source, feeds),
    )
    assert np.corrcoef(got_map.ravel(), want_map.ravel())[0, 1] > 0.99
    np.testing.assert_array_equal(got_score, want_score)  # the image score path has no linear layer: untouched


def test_identical_detectors_have_no_drift(tiny_detector, normal_folder):
    drift = measure_drift(tiny_detector, tiny_detector, sorted(map(str, normal_folder.iterdir())))
    assert (
        drift["images"] == 6
        and drift["map_pearson_mean"] == pytest.approx(1.0)
        and drift["map_pearson_min"] == pytest.approx(1.0)
    )
    assert drift["score_spearman"] == pytest.approx(1.0) and drift["map_max_error_of_range"] == 0.0
    with pytest.raises(ZsadEdgeError, match="at least 3 images"):
        measure_drift(tiny_detector, tiny_detector, [str(next(normal_folder.iterdir()))])


def test_variants_join_the_bundle_with_drift_and_run_in_the_runtime(bundle, normal_folder):
    images = load_calibration_images([normal_folder], None)
    for precision in ("int8", "int8-dynamic", "fp16"):
        record = add_precision(bundle, precision, images, "minmax", LOOSE)
        assert record["drift"]["images"] == len(images) and record["plan"]["precision"] == precision
    manifest = load_manifest(bundle)  # every variant file is hashed and verifies
    assert set(manifest.precisions) == {"int8", "int8-dynamic", "fp16"}
    assert manifest.precisions["int8"]["plan"]["calibration_method"] == "minmax"
    assert not [p for p in bundle.iterdir() if p.name.startswith(".")]  # no staging left behind
    fp32 = Detector.from_bundle(bundle, backend="cpu")
    for precision, min_pearson in (("int8", 0.95), ("int8-dynamic", 0.95), ("fp16", 0.9999)):
        variant = Detector.from_bundle(bundle, backend="cpu", precision=precision)
        assert variant.encoder.name == f"image_encoder.{precision}.onnx"
        drift = measure_drift(fp32, variant, images)
        assert drift["map_pearson_mean"] >= min_pearson, (precision, drift)
        assert drift == pytest.approx(manifest.precisions[precision]["drift"], rel=1e-5)  # the manifest tells the truth
    assert (
        measure_drift(fp32, Detector.from_bundle(bundle, backend="cpu", precision="fp16"), images)[
            "map_max_error_of_range"
        ]
        < 0.01
    )
    dynamic = manifest.precisions["int8-dynamic"]  # int8-dynamic also carries int8 heads; the others keep fp32 heads
    assert (
        dynamic["components"]["heads"].file == "heads.int8-dynamic.onnx" and dynamic["heads_plan"]["weight_nodes"] == 4
    )
    assert "heads" not in manifest.precisions["int8"]["components"] and "heads_plan" not in manifest.precisions["int8"]
    (bundle / "image_encoder.int8.onnx.data").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="image_encoder.int8.onnx.data does not match"):
        load_manifest(bundle)


def test_drift_gate_refuses_a_variant_and_leaves_the_bundle_as_it_was(bundle, normal_folder):
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with pytest.raises(
        ParityError,
        match=r"int8-dynamic image encoder \+ heads drifts too far from fp32 on 6 images: "
        r"map Pearson [01]\.\d{4} < 1\.01 \(map max error",
    ):
        add_precision(
            bundle, "int8-dynamic", load_calibration_images([normal_folder], None), tolerance=DriftTolerance(1.01, None)
        )
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_missing_variant_and_bad_calibration_input_are_named(bundle, tmp_path):
    with pytest.raises(
        BundleError, match=r"no 'int8' variant \(available: fp32\); add it with .*add-precision BUNDLE --precision int8"
    ):
        Detector.from_bundle(bundle, backend="cpu", precision="int8")
    (tmp_path / "few").mkdir()
    write_image(tmp_path / "few" / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "few" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ZsadEdgeError, match="at least 4 readable normal images, got 1 .*b.png"):
        load_calibration_images([tmp_path / "few"], None)
    with pytest.raises(ZsadEdgeError, match="unknown precision 'int4'"):
        convert(bundle / "image_encoder.onnx", tmp_path / "x.onnx", "int4")
    with pytest.raises(ZsadEdgeError, match="int8 .* needs calibration images"):
        convert(bundle / "image_encoder.onnx", tmp_path / "x.onnx", "int8")


def test_build_engines_adds_variants_to_an_existing_bundle(bundle, normal_folder, capsys):
    from zsad_edge.export.cli import main

    assert (
        main(
            [
                "add-precision",
                str(bundle),
                "--precision",
                "int8-dynamic",
                "--calibration-images",
                str(normal_folder),
                "--min-score-spearman",
                "0",
            ]
        )
        == 0
    )
    assert "int8-dynamic variant added" in capsys.readouterr().out
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precisions"]["int8-dynamic"]["tolerance"] == {"min_map_pearson": 0.97, "min_score_spearman": 0.0}
    assert main(["add-precision", str(bundle), "--calibration-images", str(normal_folder)]) == 2
    assert "add-precision needs --precision" in capsys.readouterr().err
    assert main(["add-precision", str(bundle), "--precision", "int8"]) == 2
    assert "--precision needs --calibration-images" in capsys.readouterr().err


def test_eight_bit_weights_for_cpus_with_an_int8_dot_product(bundle, normal_folder, tmp_path, monkeypatch):
    from zsad_edge.calibration import variants

    images = load_calibration_images([normal_folder], None)
    source = bundle / "image_encoder.onnx"
    plan, _ = convert(source, tmp_path / "enc.int8.onnx", "int8", _feeds(bundle, images), "minmax", weight_bits=8)
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "enc.int8.onnx")).graph.initializer]
    int8_weights = [w for w in weights if w.dtype == np.int8 and w.ndim >= 2]
    assert plan.weight_bits == 8 and max(int(np.abs(w).max()) for w in int8_weights) > 64  # the full range
    with pytest.raises(ZsadEdgeError, match="7 or 8 bits, not 9"):
        convert(source, tmp_path / "x.onnx", "int8", _feeds(bundle, images), "minmax", weight_bits=9)
    monkeypatch.setattr(variants, "int8_dot_product", lambda: "avx512_vnni")
    assert variants.resolve_weight_bits("auto") == 8
    monkeypatch.setattr(variants, "int8_dot_product", lambda: None)
    assert variants.resolve_weight_bits("auto") == 7 and variants.resolve_weight_bits("8") == 8
    record = add_precision(bundle, "int8", images, "minmax", LOOSE, weight_bits="auto")
    assert record["plan"]["weight_bits"] == 7 and record["plan"]["built_on_int8_dot_product"] is None
