"""Anomaly-detection metrics: image/pixel AUROC, AP, F1-max (scikit-learn) and AUPRO.

AUPRO follows the MVTec AD definition: per-region overlap (each connected ground-truth region,
8-connectivity, weighs the same) against the false-positive rate on normal pixels, integrated
up to an FPR limit (0.3) with the trapezoid rule and divided by that limit. It is computed exactly
over every distinct score in one sort, not on a threshold grid.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def detection_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC, AP and F1-max of binary labels vs scores; NaN where one class is absent."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.all() or not labels.any():
        return {"auroc": float("nan"), "ap": float("nan"), "f1_max": float("nan")}
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        "f1_max": f1_max(labels, scores),
    }


def pro_curve(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) after each distinct score, from the highest score down, starting at (0, 0)."""
    scores, fpr_weights, pro_weights = [], [], []
    regions = 0
    normal_pixels = sum(int((~m).sum()) for m in masks)
    for anomaly_map, mask in zip(maps, masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        weight = np.where(labels > 0, 1.0 / sizes[labels], 0.0)
        scores.append(anomaly_map.ravel())
        pro_weights.append(weight.ravel())
        fpr_weights.append((~mask).ravel().astype(np.float64))
        regions += count - 1
    if regions == 0 or normal_pixels == 0:
        raise ValueError("AUPRO needs at least one anomalous region and one normal pixel")
    scores = np.concatenate(scores)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    fpr = np.cumsum(np.concatenate(fpr_weights)[order]) / normal_pixels
    pro = np.cumsum(np.concatenate(pro_weights)[order]) / regions
    # Pixels with equal scores switch together: keep the last index of each run of equal scores.
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    return np.r_[0.0, fpr[last_of_run]], np.r_[0.0, pro[last_of_run]]


def integrate_until(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) for x in [0, limit], x non-decreasing, y linear between points."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < len(x):
        nxt = inside.sum()
        x0, x1, y0, y1 = x[nxt - 1], x[nxt], y[nxt - 1], y[nxt]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to `fpr_limit` (1.0 is perfect)."""
    fpr, pro = pro_curve(maps, masks)
    return integrate_until(fpr, pro, fpr_limit) / fpr_limit
