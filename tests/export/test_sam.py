"""SAM refinement: decoder graph vs segment_anything's API, ONNX parity, real LiteMedSAM quality,
the CLIP-SAM cascade's prompts and edge cases, and CLIP-SAM bundles end to end."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from zsad_edge.export.graphs.sam_graphs import export_sam_graphs
from zsad_edge.export.models.sam import SamDecoderGraph, SamSpec, load_sam
from zsad_edge.export.references.sam_predictor import ReferenceSamPredictor
from zsad_edge.runtime.backends.ort import OrtComponent
from zsad_edge.runtime.bundle import load_manifest
from zsad_edge.runtime.errors import BundleError, ModelLoadError
from zsad_edge.runtime.sam.cascade import CascadeConfig, refine, select_masks, top_peaks
from zsad_edge.runtime.sam.predictor import SamGeometry, SamPredictor

HEIGHT, WIDTH = 300, 420


def _geometry(sam):
    return SamGeometry(sam.input_size, sam.pixel_mean, sam.pixel_std, sam.embedding_grid)


def _predictor(sam, folder):
    export_sam_graphs(sam, folder, tolerance=1e-4)  # raises ParityError beyond 1e-4 of the output range
    return SamPredictor(
        OrtComponent(folder / "sam_encoder.onnx"), OrtComponent(folder / "sam_decoder.onnx"), _geometry(sam)
    )


@pytest.fixture(scope="module")
def litemedsam():
    return load_sam(SamSpec("litemedsam"))


@pytest.fixture(scope="module")
def real_predictor(litemedsam, tmp_path_factory):
    return _predictor(litemedsam, tmp_path_factory.mktemp("litemedsam"))


@pytest.fixture(scope="module")
def random_reference(real_predictor):
    """LiteMedSAM with random weights, in torch: the contrast that shows the shapes are not trivial."""
    return ReferenceSamPredictor(load_sam(SamSpec("litemedsam", random_init=True)), real_predictor.geometry)


def _shape(kind):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    if kind == "disk":
        cv2.circle(mask, (200, 150), 60, 1, -1)
    elif kind == "square":
        cv2.rectangle(mask, (120, 80), (230, 190), 1, -1)
    else:  # ring: inner radius 20 of 70
        cv2.circle(mask, (220, 140), 70, 1, -1)
        cv2.circle(mask, (220, 140), 20, 0, -1)
    return mask.astype(bool)


def _textured(mask, seed=0):
    """Bright shape on a blurred-noise background, as RGB float."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.normal(0.45, 0.12, mask.shape).astype(np.float32), (0, 0), 3)
    image[mask] = 0.85 + 0.05 * rng.standard_normal(int(mask.sum()))
    return np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)


def _box(mask, margin=4):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min() - margin, ys.min() - margin, xs.max() + margin, ys.max() + margin], np.float32)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@torch.no_grad()
def test_decoder_graph_equals_segment_anything_prompt_api(litemedsam):
    """Points (+ the padding point the API adds), a box, and points + box + mask input."""
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 256, 64, 64, generator=generator)
    graph = SamDecoderGraph(litemedsam.prompt_encoder, litemedsam.mask_decoder).eval()
    points = torch.tensor([[[100.0, 120.0], [30.0, 40.0]]])
    point_labels = torch.tensor([[1.0, 0.0]])
    box = torch.tensor([[40.0, 50.0, 180.0, 200.0]])
    mask = torch.randn(1, 1, 256, 256, generator=generator)
    cases = [
        (
            dict(points=(points, point_labels), boxes=None, masks=None),
            torch.cat([points, torch.zeros(1, 1, 2)], 1),
            torch.tensor([[1.0, 0.0, -1.0]]),
            None,
        ),
        (dict(points=None, boxes=box, masks=None), box.reshape(1, 2, 2), torch.tensor([[2.0, 3.0]]), None),
        (
            dict(points=(points, point_labels), boxes=box, masks=mask),
            torch.cat([points, box.reshape(1, 2, 2)], 1),
            torch.tensor([[1.0, 0.0, 2.0, 3.0]]),
            mask,
        ),
    ]
    for api_prompts, coords, labels, mask_input in cases:
        sparse, dense = litemedsam.prompt_encoder(**api_prompts)
        want_masks, want_iou = litemedsam.mask_decoder.predict_masks(
            embedding, litemedsam.prompt_encoder.get_dense_pe(), sparse, dense
        )
        has_mask = torch.tensor([0.0 if mask_input is None else 1.0])
        got_iou, got_masks = graph(
            embedding, coords, labels, torch.zeros(1, 1, 256, 256) if mask_input is None else mask_input, has_mask
        )
        torch.testing.assert_close(got_masks, want_masks, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_iou, want_iou, rtol=0, atol=1e-6)


def test_runtime_predictor_matches_the_torch_reference(litemedsam, real_predictor):
    reference = ReferenceSamPredictor(litemedsam, real_predictor.geometry)
    rgb = _textured(_shape("disk"))
    got, want = real_predictor.encode(rgb), reference.encode(rgb)
    assert np.abs(got.embedding - want.embedding).max() <= 1e-4 * np.abs(want.embedding).max()
    rng = np.random.default_rng(1)
    coords = (rng.random((3, 4, 2)) * 255).astype(np.float32)
    labels = np.array([[1, 0, 1, -1], [1, 1, 2, 3], [0, 1, 0, -1]], np.float32)
    for mask_input in (None, rng.standard_normal((3, 256, 256)).astype(np.float32)):
        got_iou, got_masks = real_predictor.decode(got, coords, labels, mask_input)
        want_iou, want_masks = reference.decode(got, coords, labels, mask_input)
        assert np.abs(got_masks - want_masks).max() <= 1e-4 * np.abs(want_masks).max()
        assert np.abs(got_iou - want_iou).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["disk", "square", "ring"])
def test_box_prompt_segments_synthetic_shapes_with_real_weights(real_predictor, random_reference, kind):
    """Real LiteMedSAM weights through ONNX reach IoU >= 0.9; random weights stay below 0.3."""
    shape = _shape(kind)
    rgb = _textured(shape)
    mask, _ = real_predictor.predict_box(real_predictor.encode(rgb), _box(shape))
    assert mask.shape == shape.shape and _iou(mask, shape) >= 0.9
    # the runtime's box prompting over the torch reference's encode/decode (same signatures)
    random_mask, _ = SamPredictor.predict_box(random_reference, random_reference.encode(rgb), _box(shape))
    assert _iou(random_mask, shape) < 0.3


def test_top_peaks_keep_their_spacing_and_region():
    values = np.zeros((20, 20))
    values[5, 5], values[5, 7], values[15, 15], values[2, 18] = 4.0, 3.0, 2.0, 5.0
    allowed = np.ones((20, 20), bool)
    allowed[:, 17:] = False  # the highest value lies outside the region
    np.testing.assert_array_equal(top_peaks(values, allowed, 3, spacing=3), [[5, 5], [15, 15], [0, 0]])
    np.testing.assert_array_equal(top_peaks(values, allowed, 2, spacing=1), [[5, 5], [7, 5]])
    assert top_peaks(values, np.zeros((20, 20), bool), 3, 3).shape == (0, 2)


def test_select_masks_takes_multimask_only_for_a_lone_point():
    iou = np.array([[0.1, 0.2, 0.9, 0.3]])
    masks = np.arange(4)[None, :, None, None] * np.ones((1, 4, 2, 2))
    assert select_masks(iou, masks, ambiguous=True)[1][0, 0, 0] == 2
    assert select_masks(iou, masks, ambiguous=False)[1][0, 0, 0] == 0


class _CountingPredictor:
    """Wraps a predictor and counts encoder runs (no region must not cost a SAM encoder run)."""

    def __init__(self, inner):
        self.inner, self.geometry, self.encodes = inner, inner.geometry, 0

    def encode(self, rgb):
        self.encodes += 1
        return self.inner.encode(rgb)

    def decode(self, *args, **kwargs):
        return self.inner.decode(*args, **kwargs)


@pytest.mark.parametrize("mode", ["box", "points"])
def test_cascade_outlines_a_defect_from_a_coarse_map(real_predictor, mode):
    shape = _shape("disk")
    coarse = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 25)
    coarse /= coarse.max()
    result = refine(real_predictor, _textured(shape), coarse, 0.5, CascadeConfig(prompt_mode=mode))
    assert len(result.regions) == 1 and result.mask.shape == shape.shape
    assert _iou(result.mask, shape) > _iou(coarse > 0.5, shape) if mode == "box" else _iou(result.mask, shape) > 0.3
    assert result.regions[0]["positive_points"] == (3 if mode == "points" else 0)
    inside, outside = result.anomaly_map[result.mask], result.anomaly_map[~result.mask]
    assert inside.min() >= 0.5 * coarse[result.mask].min() and outside.max() <= 0.5 * coarse.max() + 1e-6


def test_agreement_gate_keeps_the_clip_region_when_sam_disagrees(real_predictor):
    shape = _shape("disk")
    coarse = cv2.GaussianBlur(shape.astype(np.float32), (0, 0), 25)
    coarse /= coarse.max()
    region = coarse > 0.5
    accepted = refine(real_predictor, _textured(shape), coarse, 0.5, CascadeConfig(prompt_mode="box"))
    agreement = accepted.regions[0]["clip_agreement"]
    assert 0.0 < agreement < 0.99 and not accepted.regions[0]["fallback_to_clip"]
    assert agreement == pytest.approx(_iou(accepted.mask, region), abs=1e-4)
    gated = refine(
        real_predictor, _textured(shape), coarse, 0.5, CascadeConfig(prompt_mode="box", min_agreement=agreement + 0.01)
    )
    assert gated.regions[0]["fallback_to_clip"] and np.array_equal(gated.mask, region)
    np.testing.assert_allclose(gated.anomaly_map, 0.5 * coarse + 0.5 * np.where(region, coarse.max(), 0), atol=1e-6)


@pytest.mark.parametrize("mode", ["box", "points"])
def test_cascade_edge_cases_have_defined_results(real_predictor, mode):
    config = CascadeConfig(prompt_mode=mode)
    counting = _CountingPredictor(real_predictor)
    rgb = _textured(_shape("square"))
    # empty map and a map below the threshold: no region, no SAM encoder run, map unchanged
    for flat in (np.zeros((HEIGHT, WIDTH), np.float32), np.full((HEIGHT, WIDTH), 0.2, np.float32)):
        result = refine(counting, rgb, flat, 0.5, config)
        assert not result.mask.any() and result.regions == [] and np.array_equal(result.anomaly_map, flat)
    assert counting.encodes == 0
    # a 1-pixel region and a region touching the border, on an image smaller than SAM's input
    small = _textured(np.zeros((60, 90), bool))
    spot = np.zeros((60, 90), np.float32)
    spot[30, 40] = 1.0
    spot[0:10, 80:90] = 0.9
    result = refine(counting, small, spot, 0.5, config)
    assert counting.encodes == 1 and len(result.regions) == 2 and result.mask.shape == (60, 90) and result.mask.any()
    spot_region, border_region = result.regions  # ordered by peak
    if mode == "points":
        assert spot_region["positive_points"] == 1  # one pixel holds one peak
    for region in result.regions:
        assert all(0 <= v <= real_predictor.geometry.input_size for v in region["box_model_px"])
    assert np.isfinite(border_region["sam_iou"])  # a region on the border is prompted like any other


@pytest.fixture(scope="module")
def clipsam_bundle(method_bundles):
    """The session's CLIP-SAM bundle (tiny random CLIP, SDP, LiteMedSAM; built once, tests/conftest.py)."""
    return method_bundles["clipsam"]


@pytest.mark.slow
def test_clipsam_bundle_runtime_matches_reference(clipsam_bundle):
    from zsad_edge.export.build import reference_from_bundle
    from zsad_edge.runtime.detector import Detector

    manifest = load_manifest(clipsam_bundle)
    assert {"sam_encoder", "sam_decoder"} <= set(manifest.components)
    assert manifest.method["params"]["sam"]["cascade"]["prompt_mode"] == "points"  # CLIP-SAM as published
    runtime, reference = Detector.from_bundle(clipsam_bundle), reference_from_bundle(clipsam_bundle)
    for detector in (runtime, reference):  # flag every image, outline every positive pixel
        detector.image_threshold, detector.map_threshold = -np.inf, 0.0
    images = [_textured(_shape(kind))[::2, ::2] for kind in ("disk", "square")]
    for got, want in zip(runtime.detect_batch(images), reference.detect_batch(images)):
        assert got.refinement is not None and len(got.refinement.regions) == len(want.refinement.regions)
        # The fused map steps at SAM's mask edge, so a pixel whose logit sits on the threshold may
        # flip; such pixels must be rare, and everywhere else the maps agree to 1e-4 of their range.
        agree = got.refinement.mask == want.refinement.mask
        assert np.mean(~agree) < 1e-3
        difference = np.abs(got.refinement.anomaly_map - want.refinement.anomaly_map)[agree]
        assert difference.max() <= 1e-4 * np.ptp(want.refinement.anomaly_map)


@pytest.mark.slow
def test_clipsam_cli_writes_sam_masks(clipsam_bundle, tmp_path):
    image = tmp_path / "part.png"
    cv2.imwrite(str(image), (_textured(_shape("disk"))[..., 0] * 255).astype(np.uint8))
    manifest_path = clipsam_bundle / "manifest.json"
    bundle = tmp_path / "bundle"
    import shutil

    shutil.copytree(clipsam_bundle, bundle)
    manifest = json.loads(manifest_path.read_text())
    manifest["scoring"].update(image_threshold=-1e9, map_threshold=-1e9)  # flag it; the whole map is one region
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zsad_edge.runtime.cli",
            "detect",
            str(bundle),
            str(image),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    sam_mask = cv2.imread(str(tmp_path / "out" / "part_sam_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert sam_mask.shape == (HEIGHT, WIDTH) and set(np.unique(sam_mask)) <= {0, 255}
    summary = json.loads((tmp_path / "out" / "part.json").read_text())
    assert len(summary["sam_regions"]) == 1 and "sam_mask_fraction" in summary


def test_sam_weights_errors_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="needs its weights file: pass --sam-checkpoint"):
        load_sam(SamSpec("vit_b"))
    with pytest.raises(ModelLoadError, match="SAM checkpoint not found"):
        load_sam(SamSpec("vit_b", checkpoint=tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="cannot read SAM checkpoint"):
        load_sam(SamSpec("litemedsam", checkpoint=tmp_path / "junk.pth"))
    torch.save({"image_encoder.x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="is not a litemedsam checkpoint"):
        load_sam(SamSpec("litemedsam", checkpoint=tmp_path / "other.pth"))
    with pytest.raises(ModelLoadError, match="unknown SAM kind"):
        load_sam(SamSpec("vit_x"))


def test_invalid_cascade_settings_are_named():
    with pytest.raises(BundleError, match="prompt_mode 'clicks' is not one of points, box"):
        CascadeConfig(prompt_mode="clicks")
    with pytest.raises(BundleError, match="fusion_weight 2 is outside"):
        CascadeConfig(fusion_weight=2)
    with pytest.raises(BundleError, match="min_agreement 1.5 is outside"):
        CascadeConfig(min_agreement=1.5)
    with pytest.raises(BundleError, match="invalid CLIP-SAM cascade settings in the manifest"):
        CascadeConfig.from_params({"spacing": 3})


@pytest.mark.slow
def test_segment_anything_vit_b_from_a_checkpoint_exports_and_matches(tmp_path):
    """segment_anything's vit_b (1024 px, random weights saved as a local checkpoint): load, export, parity."""
    random_sam = load_sam(SamSpec("vit_b", random_init=True, seed=3))
    checkpoint = tmp_path / "sam_vit_b_random.pth"
    state = {
        f"{part}.{key}": value
        for part in ("image_encoder", "prompt_encoder", "mask_decoder")
        for key, value in getattr(random_sam, part).state_dict().items()
    }
    torch.save(state, checkpoint)
    sam = load_sam(SamSpec("vit_b", checkpoint=checkpoint))
    assert sam.weights_origin["kind"] == "checkpoint" and (sam.input_size, sam.embedding_grid) == (1024, (64, 64))
    torch.testing.assert_close(sam.mask_decoder.iou_token.weight, random_sam.mask_decoder.iou_token.weight)
    runtime = _predictor(sam, tmp_path)  # the export's gate: encoder and decoder within 1e-4 of torch
    reference = ReferenceSamPredictor(sam, runtime.geometry)
    rgb = _textured(_shape("square"))
    got = runtime.encode(rgb)  # the predictor's own path (resize, pad, normalise) at 1024 px, prompted below
    assert got.embedding.shape[-2:] == (64, 64)
    box = runtime.geometry.to_model_coords(_box(_shape("square")).reshape(2, 2), got.original_size)[None]
    labels = np.array([[2.0, 3.0]], np.float32)
    got_masks, want_masks = runtime.decode(got, box, labels)[1], reference.decode(got, box, labels)[1]
    assert np.abs(got_masks - want_masks).max() <= 1e-4 * np.abs(want_masks).max()


@pytest.mark.slow
def test_a_station_runs_clip_sam_and_reports_the_refined_regions(clipsam_bundle, tmp_path):
    from zsad_edge.runtime.detector import Detector
    from zsad_edge.runtime.station.drop_folder import DropFolder
    from zsad_edge.runtime.station.station import watch

    detector = Detector.from_bundle(clipsam_bundle)
    detector.image_threshold, detector.map_threshold = -np.inf, 0.0  # flag every frame: SAM runs on each
    for index, kind in enumerate(("disk", "square")):
        cv2.imwrite(str(tmp_path / f"{index}.png"), (_textured(_shape(kind))[..., 0] * 255).astype(np.uint8))
    events = list(watch(detector, [DropFolder("drop", tmp_path)]))
    direct = detector.detect_batch([str(tmp_path / f"{index}.png") for index in range(2)])
    assert [e["origin"] for e in events] == ["0.png", "1.png"] and all("refine" in e["stages_ms"] for e in events)
    for event, result in zip(events, direct):
        assert event["sam_mask_fraction"] == pytest.approx(float(result.refinement.mask.mean()))
        assert event["regions_total"] >= 1 and sum(r["area"] for r in event["regions"]) <= result.refinement.mask.sum()
