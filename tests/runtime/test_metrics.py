"""Metrics against scikit-learn and a brute-force AUPRO."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from zsad_edge.runtime.evaluation.metrics import aupro, detection_metrics, f1_max, integrate_until


def _brute_force_aupro(maps, masks, limit=0.3):
    """Threshold at every distinct score, label regions with scipy, integrate by hand."""
    points = [(0.0, 0.0)]
    region_maps = []  # (image index, boolean region)
    for index, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        region_maps += [(index, labels == k) for k in range(1, count + 1)]
    normal = sum((~m).sum() for m in masks)
    for t in sorted({float(v) for m in maps for v in np.unique(m)}, reverse=True):
        fp = sum(((m >= t) & ~g).sum() for m, g in zip(maps, masks))
        overlaps = [((maps[i] >= t) & r).sum() / r.sum() for i, r in region_maps]
        points.append((fp / normal, float(np.mean(overlaps))))
    fpr, pro = np.array(points).T
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fpr, pro), zip(fpr[1:], pro[1:])):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def _case(seed, quantise):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for _ in range(3):
        mask = np.zeros((12, 15), bool)
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, 9), rng.integers(0, 12)
            mask[y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
        score = rng.random((12, 15)) + 0.8 * mask
        maps.append(np.round(score, 1) if quantise else score)
        masks.append(mask)
    masks[0][0, 0] = True  # at least one region overall
    return maps, masks


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("quantise", [False, True])  # quantised scores exercise ties
def test_aupro_matches_brute_force(seed, quantise):
    maps, masks = _case(seed, quantise)
    assert aupro(maps, masks) == pytest.approx(_brute_force_aupro(maps, masks), abs=1e-6)


def test_aupro_extremes():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    assert aupro([mask.astype(float)], [mask]) == pytest.approx(1.0)
    assert aupro([1.0 - mask], [mask]) < 0.01
    with pytest.raises(ValueError, match="at least one anomalous region"):
        aupro([np.zeros((4, 4))], [np.zeros((4, 4), bool)])


def test_detection_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = rng.random(200) + 0.5 * labels
    metrics = detection_metrics(labels, scores)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1_max(labels, scores) == pytest.approx(best, abs=1e-6)


def test_single_class_gives_nan_not_an_exception():
    assert np.isnan(detection_metrics(np.zeros(5), np.arange(5))["auroc"])


def test_integrate_until_interpolates_at_the_limit():
    x, y = np.array([0.0, 0.2, 0.4]), np.array([0.0, 1.0, 1.0])
    assert integrate_until(x, y, 0.3) == pytest.approx(0.1 + 0.1)
