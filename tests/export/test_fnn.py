"""Random-word FNN: prompt generation, network and scorer by hand, training, bundle parity and fusion."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import relative_map_error

from zsad_edge.export.build import BuildConfig, build_bundle, reference_from_bundle
from zsad_edge.export.models.clip import ClipSpec
from zsad_edge.export.models.fnn import (
    FnnClassifier,
    FnnScorer,
    FnnTrainConfig,
    PromptProbabilityHeads,
    RandomWordConfig,
    random_word_pairs,
    train_fnn,
)
from zsad_edge.export.models.prompts import PromptSet
from zsad_edge.runtime.detector import Detector

CLIPAD = PromptSet.load("clipad")


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _bilinear_half_pixel(grid, size):
    """align_corners=False bilinear upsampling written out (edge-clamped sample positions)."""

    def weights(n_in, n_out):
        matrix = np.zeros((n_out, n_in))
        for i in range(n_out):
            x = min(max((i + 0.5) * n_in / n_out - 0.5, 0), n_in - 1)
            low = int(np.floor(x))
            high = min(low + 1, n_in - 1)
            matrix[i, low] += 1 - (x - low)
            matrix[i, high] += x - low
        return matrix

    return weights(grid.shape[0], size[0]) @ grid @ weights(grid.shape[1], size[1]).T


def test_random_word_pairs_differ_only_in_the_state():
    config = RandomWordConfig(pairs=200, seed=3)
    normal, abnormal = random_word_pairs(CLIPAD, config)
    assert len(normal) == len(abnormal) == 200
    template_words = {w.strip(".") for t in CLIPAD.templates for w in t.format("").split()}
    state_words = {w for s in CLIPAD.normal_states + CLIPAD.abnormal_states for w in s.format("object").split()}

    def skeletons(sentence, states):
        return {
            sentence.replace(state.format("object"), "<STATE>")
            for state in states
            if state.format("object") in sentence
        }

    for n, a in zip(normal, abnormal):
        # one skeleton (template + random words at the same places) with a normal / abnormal state in it
        assert skeletons(n, CLIPAD.normal_states) & skeletons(a, CLIPAD.abnormal_states)
        inserted = [w for w in n.split() if w.strip(".") not in template_words | state_words]
        assert 1 <= len(inserted) <= 3 and all(3 <= len(w) <= 10 and w.isalpha() for w in inserted)
    assert random_word_pairs(CLIPAD, config) == (normal, abnormal)  # seeded
    assert random_word_pairs(CLIPAD, RandomWordConfig(pairs=200, seed=4))[0] != normal


@torch.no_grad()
def test_classifier_is_four_linear_layers_by_hand():
    torch.manual_seed(0)
    classifier = FnnClassifier(6, hidden=(5, 4, 3)).eval()
    assert sum(isinstance(m, torch.nn.Linear) for m in classifier.modules()) == 4
    x = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    h = x / np.linalg.norm(x, axis=1, keepdims=True)
    linears = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        h = h @ linear.weight.numpy().T + linear.bias.numpy()
        h = np.maximum(h, 0) if i < 3 else h
    np.testing.assert_allclose(classifier(torch.from_numpy(x)).numpy(), _softmax(h)[:, 1], atol=1e-6)


@torch.no_grad()
def test_scorer_and_prompt_heads_by_hand():
    """FNN map: mean over taps of the per-patch probability (CLS dropped), upsampled; score: FNN(image)."""
    torch.manual_seed(1)
    classifier = FnnClassifier(4, hidden=(8, 8, 8)).eval()
    taps = torch.randn(1, 2, 1 + 4, 4)
    embedding = torch.randn(1, 4)
    fnn_map, fnn_score = FnnScorer(classifier, (2, 2), (4, 4))(embedding, taps)
    per_patch = classifier(taps[0, :, 1:]).mean(dim=0).numpy().reshape(2, 2)
    np.testing.assert_allclose(fnn_map[0].numpy(), _bilinear_half_pixel(per_patch, (4, 4)), atol=1e-6)
    assert float(fnn_score[0]) == pytest.approx(float(classifier(embedding)[0]), abs=1e-7)

    text = F.normalize(torch.randn(4, 2), dim=0)
    prompt_map, prompt_score = PromptProbabilityHeads(text, (2, 2), (2, 2))(embedding, taps)
    tokens = F.normalize(taps[0, :, 1:], dim=-1).numpy()
    expected = _softmax(100 * tokens @ text.numpy())[..., 1].mean(axis=0).reshape(2, 2)
    np.testing.assert_allclose(prompt_map[0].numpy(), expected, atol=1e-6)
    image = F.normalize(embedding, dim=-1).numpy()
    assert float(prompt_score[0]) == pytest.approx(_softmax(100 * image @ text.numpy())[0, 1], abs=1e-6)


def test_training_is_seeded_and_learns_a_separable_text_set():
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(16)
    base = rng.standard_normal((400, 16))
    normal = torch.tensor(base - 0.8 * direction, dtype=torch.float32)
    abnormal = torch.tensor(base + 0.8 * direction, dtype=torch.float32)
    config = FnnTrainConfig(epochs=15, batch_size=64, seed=5)
    reports, weights = [], []
    for _ in range(2):
        classifier = FnnClassifier(16)
        reports.append(train_fnn(classifier, normal, abnormal, config, progress=False))
        weights.append(classifier.layers[0].weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)
    assert reports[0]["held_out_accuracy"] >= 0.95 and reports[0]["held_out_pairs"] == 40
    assert reports[0]["epoch_losses"][-1] < 0.5 * reports[0]["epoch_losses"][0]


@pytest.fixture(scope="module", params=["clean", "official"])
def fnn_built(request, tmp_path_factory):
    """The FNN runs on CLIP-AD's encoder: every parity test runs in both CLIP-AD modes."""
    config = BuildConfig(
        clip=ClipSpec("zsad-tiny-vit", random_init=True, image_size=224),
        method="fnn",
        out_dir=tmp_path_factory.mktemp("fnn") / "bundle",
        gaussian_sigma=4.0,
        clipad_mode=request.param,
        fnn=FnnTrainConfig(epochs=3, words=RandomWordConfig(pairs=300)),
    )
    return build_bundle(config)


def _images(rng, count):
    return [np.clip(0.5 + 0.15 * rng.standard_normal((90, 120)), 0, 1).astype(np.float32) for _ in range(count)]


def test_bundle_has_an_fnn_graph_and_records_its_training(fnn_built):
    manifest = fnn_built.manifest
    assert set(manifest.components) == {"image_encoder", "heads", "fnn"}
    params = manifest.method["params"]
    assert params["fusion_weight"] == 0.5 and params["fnn"]["training"]["words"]["pairs"] == 300
    assert len(params["fnn"]["report"]["epoch_losses"]) == 3 and "fnn_weights.npz" in manifest.files


@pytest.mark.parametrize("batch", [1, 3])
def test_runtime_matches_reference(fnn_built, rng, batch):
    runtime, reference = Detector.from_bundle(fnn_built.path), fnn_built.reference_detector()
    images = _images(rng, batch)
    for got, want in zip(runtime.detect_batch(images), reference.detect_batch(images)):
        assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4
        assert abs(got.score - want.score) <= 1e-5


def test_fusion_is_the_weighted_mean_of_prompt_and_fnn(fnn_built, rng):
    runtime = Detector.from_bundle(fnn_built.path)
    batch, _ = runtime.preprocess(_images(rng, 2))
    features = runtime.encode(batch)
    prompt, fnn = runtime.heads_graph.run(features), runtime.fnn_graph.run(features)
    maps, scores = runtime.post_heads(features, *runtime.heads(features))
    np.testing.assert_allclose(maps, 0.5 * prompt["anomaly_map"] + 0.5 * fnn["anomaly_map"], atol=1e-7)
    (fusion,) = runtime.map_stages
    fusion.weight = 1.0  # FNN alone
    np.testing.assert_allclose(runtime.post_heads(features, *runtime.heads(features))[1], fnn["image_score"], atol=1e-7)


def test_reference_rebuilt_from_the_bundle_uses_the_stored_fnn(fnn_built, rng):
    image = _images(rng, 1)[0]
    got, want = reference_from_bundle(fnn_built.path)(image), Detector.from_bundle(fnn_built.path)(image)
    assert relative_map_error(got.anomaly_map, want.anomaly_map) <= 1e-4 and abs(got.score - want.score) <= 1e-5
