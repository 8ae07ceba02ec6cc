"""CLIP-AD SDP and SDP+ through export -> bundle -> lean runtime, against the PyTorch reference."""

import numpy as np
import onnx
import pytest
import torch
from helpers import relative_map_error, run_onnx
from torch import nn

from zsad_edge.export.build import BuildConfig, build_bundle, reference_from_bundle
from zsad_edge.export.models.clip import ClipSpec
from zsad_edge.export.models.sdp import SurgeryEncoder
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import BundleError, ModelLoadError


@pytest.fixture(
    scope="module",
    params=[("sdp", "official"), ("sdpplus", "official"), ("sdp", "clean"), ("sdpplus", "clean")],
    ids="-".join,
)
def sdp_built(request, tmp_path_factory):
    """Every parity test below runs for both methods in both CLIP-AD modes."""
    method, mode = request.param
    config = BuildConfig(
        clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224),
        method=method,
        out_dir=tmp_path_factory.mktemp(method) / "bundle",
        random_heads=True,
        clipad_mode=mode,
    )
    return build_bundle(config)


def _images(rng, count, shape=(100, 150)):
    return [np.clip(0.5 + 0.15 * rng.standard_normal(shape), 0, 1).astype(np.float32) for _ in range(count)]


def test_manifest_records_the_method_and_its_defaults(sdp_built):
    manifest = sdp_built.manifest
    params = manifest.method["params"]
    assert manifest.method["name"] in ("sdp", "sdpplus")
    assert params["gaussian_sigma"] == 8.0 and params["prompt_set"] == "clipad"
    assert params["dbscan"] == {"setting": "mvtec", "eps": 0.5, "min_samples": 15}
    assert manifest.scoring["rule"] == "normalised_sum"
    assert ("heads" in params) == (manifest.method["name"] == "sdpplus")
    assert manifest.preprocess.interpolation == "pil_bicubic"
    assert manifest.clip["activation"]["name"] == "gelu"
    text = np.load(sdp_built.path / params["text_embeddings"])
    official = params["clipad_mode"] == "official"
    # Representative vectors of unit norm; the official ones hold float16 values normalised in float16.
    np.testing.assert_allclose(np.linalg.norm(text, axis=0), 1.0, atol=2e-3 if official else 1e-5)
    assert np.array_equal(text.astype(np.float16).astype(np.float32), text) == official


def test_encoder_graph_carries_the_surgery_path(sdp_built, rng):
    """The ONNX encoder's surgery output equals the torch v-v surgery stream, not the plain taps."""
    detector = Detector.from_bundle(sdp_built.path)
    outputs = [
        o.name for o in onnx.load(str(sdp_built.path / "image_encoder.onnx"), load_external_data=False).graph.output
    ]
    assert "surgery_taps" in outputs and ("taps" in outputs) == (sdp_built.manifest.method["name"] == "sdpplus")
    batch, _ = detector.preprocess(_images(rng, 2))
    got = detector.encode(batch)["surgery_taps"]
    assert isinstance(sdp_built.encoder, SurgeryEncoder)
    with torch.no_grad():
        want = sdp_built.encoder(torch.from_numpy(batch))[1].numpy()
    assert got.shape == (2, 4, 1 + 14 * 14, 32)  # CLS + 14 x 14 patches in the joint embedding space
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("batch", [1, 3])
def test_runtime_matches_reference(sdp_built, rng, batch):
    """Graphs + OpenCV smoothing + score rule vs torch modules + scipy smoothing."""
    runtime = Detector.from_bundle(sdp_built.path)
    reference = sdp_built.reference_detector()
    images = _images(rng, batch)
    for got, want in zip(runtime.detect_batch(images), reference.detect_batch(images)):
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4
        assert abs(got.score - want.score) <= 1e-5
        assert abs(got.text_score - want.text_score) <= 1e-5 and got.anomaly_map.shape == (100, 150)


def test_runtime_smooths_the_graph_map(sdp_built, rng):
    runtime = Detector.from_bundle(sdp_built.path)
    batch, sizes = runtime.preprocess(_images(rng, 1, (224, 224)))
    raw, _ = runtime.heads(runtime.encode(batch))
    smoothed = runtime.postprocess(raw, np.zeros(1), sizes)[0].anomaly_map
    assert np.abs(np.diff(smoothed, axis=1)).mean() < 0.5 * np.abs(np.diff(raw[0], axis=1)).mean()


def test_reference_rebuilt_from_the_manifest_matches(sdp_built, rng):
    rebuilt = reference_from_bundle(sdp_built.path)
    image = _images(rng, 1)[0]
    got, want = rebuilt(image), sdp_built.reference_detector()(image)
    np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, atol=1e-6)
    assert got.score == pytest.approx(want.score, abs=1e-7)


def test_few_shot_is_refused(sdp_built, rng):
    runtime = Detector.from_bundle(sdp_built.path)
    with pytest.raises(BundleError, match="few-shot memory banks work with aprilgan_zero_shot bundles"):
        runtime.fit_normal(_images(rng, 2))


def test_eval_runtime_and_rebuilt_reference_agree(sdp_built, quirky_set):
    """`zsad-edge eval --reference` for SDP bundles: metrics of both sides match."""
    from zsad_edge.runtime.evaluation.dataset import scan_dataset
    from zsad_edge.runtime.evaluation.evaluate import METRICS, evaluate

    detectors = {"runtime": Detector.from_bundle(sdp_built.path), "reference": reference_from_bundle(sdp_built.path)}
    metrics = evaluate(detectors, scan_dataset(quirky_set), progress=False)["categories"]["parts"]["metrics"]
    for metric in METRICS:
        assert metrics["runtime"][metric] == pytest.approx(metrics["reference"][metric], abs=1e-4)


def test_onnxruntime_fusions_keep_the_surgery_encoder_exact(sdp_built, rng):
    """int8-dynamic fuses the original path's attention; the v-v path has no q/k split and stays as it is."""
    from zsad_edge.calibration.ort_fusion import fuse_for_onnxruntime

    path = sdp_built.path / "image_encoder.onnx"
    fused, counts = fuse_for_onnxruntime(onnx.load(str(path)))
    layers = 4  # zsad-tiny-vit
    assert counts == {"Attention": layers, "BiasGelu": layers}
    assert sum(n.op_type == "Softmax" for n in fused.graph.node) == layers  # the surgery path's own softmax
    image = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    for got, want in zip(run_onnx(fused, {"image": image}), run_onnx(path, {"image": image})):
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_heads_int8_finds_the_linear_heads_of_sdpplus_only(sdp_built):
    from zsad_edge.calibration.precision import input_linear_layers

    layers = input_linear_layers(onnx.load(str(sdp_built.path / "heads.onnx")))
    assert len(layers) == (4 if sdp_built.manifest.method["name"] == "sdpplus" else 0)  # feature surgery has none


class _ClipAdLinearLayers(nn.Module):
    """The module CLIP-AD's train.py saves: a ModuleList `fc` of one Linear(width, embed_dim) per tap."""

    def __init__(self, width: int, embed_dim: int, taps: int) -> None:
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(taps)])


def test_official_clipad_sdpplus_checkpoint_loads_and_runs(tmp_path, rng):
    """A checkpoint in CLIP-AD's exact layout, {'linear_layers': state_dict}, exports with its weights,
    and runtime and the reference rebuilt from it agree."""
    torch.manual_seed(7)
    layers = _ClipAdLinearLayers(64, 32, 4)
    checkpoint = tmp_path / "train_on_visa.pth"
    torch.save({"linear_layers": layers.state_dict()}, checkpoint)
    built = build_bundle(
        BuildConfig(
            clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224),
            method="sdpplus",
            out_dir=tmp_path / "bundle",
            heads_checkpoint=checkpoint,
        )
    )
    assert built.manifest.method["params"]["heads"]["kind"] == "checkpoint"
    for mine, official in zip(built.modules.linear_heads.fc, layers.fc):
        assert torch.equal(mine.weight, official.weight) and torch.equal(mine.bias, official.bias)
    images = [(rng.random((100, 150)) * 255).astype(np.uint8) for _ in range(2)]
    reference = reference_from_bundle(built.path, heads_checkpoint=checkpoint)
    for got, want in zip(Detector.from_bundle(built.path).detect_batch(images), reference.detect_batch(images)):
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4
        assert abs(got.score - want.score) <= 1e-5


def test_heads_checkpoint_of_unknown_layout_names_the_accepted_ones(tmp_path):
    checkpoint = tmp_path / "other.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}, "epoch": 3}, checkpoint)
    config = BuildConfig(
        clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224),
        method="sdpplus",
        out_dir=tmp_path / "bundle",
        heads_checkpoint=checkpoint,
    )
    with pytest.raises(
        ModelLoadError,
        match=r"unknown layout \(top-level keys: epoch, model\).*trainable_linearlayer.*"
        r"linear_layers.*bare state dict",
    ):
        build_bundle(config)
    torch.save([1, 2, 3], checkpoint)
    with pytest.raises(ModelLoadError, match="holds a list, not a dict"):
        build_bundle(config)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    "method, setting, sigma",
    [("sdp", "visa", 8.0), ("sdpplus", "visa", 2.0), ("sdpplus", "mvtec", 8.0), ("fnn", "visa", 8.0)],
)
def test_published_smoothing_per_data_set(method, setting, sigma):
    """CLIP-AD's scripts: sigma 8, except SDP+ on VisA (2)."""
    from zsad_edge.export.methods import export_method

    assert export_method(method).params("object", None, None, setting)["gaussian_sigma"] == sigma
