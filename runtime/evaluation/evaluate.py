"""Evaluating detectors on MVTec-layout folders: image and pixel metrics per category and mean.

Several detectors (the runtime and the PyTorch reference) run on the same images in one pass, so
their metrics sit side by side. Pixel metrics are computed with maps and masks resized so that
their longest side is `pixel_size` (bilinear maps, nearest masks, aspect ratio kept), which keeps
memory bounded for large sets; pass None to keep original sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ImageReadError
from ..image_io import check_image, read_image
from ..pipeline import DetectionPipeline
from ..stopping import NEVER, StopRequest
from .dataset import Category, load_mask
from .metrics import aupro, detection_metrics

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


@dataclass
class _Collected:
    labels: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def metrics(self, fpr_limit: float) -> dict[str, float]:
        image = detection_metrics(np.array(self.labels), np.array(self.scores))
        result = {f"image_{k}": v for k, v in image.items()}
        has_region = any(m.any() for m in self.masks)
        if self.masks and has_region and not all(m.all() for m in self.masks):
            pixel = detection_metrics(
                np.concatenate([m.ravel() for m in self.masks]), np.concatenate([m.ravel() for m in self.maps])
            )
            result.update({f"pixel_{k}": v for k, v in pixel.items()})
            result["aupro"] = aupro(self.maps, self.masks, fpr_limit)
        else:
            result.update({k: math.nan for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")})
        return result


def pixel_metric_size(shape: tuple[int, int], longest_side: int | None) -> tuple[int, int]:
    """(width, height) for pixel metrics: the longest side scaled to `longest_side`, aspect kept.

    A square would stretch tall or wide parts (KolektorSDD is 500x1240) and weigh their pixels
    unevenly; None keeps the original size.
    """
    height, width = shape
    if longest_side is None:
        return width, height
    scale = longest_side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_pair(anomaly_map: np.ndarray, mask: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    target = pixel_metric_size(mask.shape, size)
    if target == (mask.shape[1], mask.shape[0]):
        return anomaly_map, mask
    return (
        cv2.resize(anomaly_map, target, interpolation=cv2.INTER_LINEAR),
        cv2.resize(mask.astype(np.uint8), target, interpolation=cv2.INTER_NEAREST).astype(bool),
    )


def evaluate(
    detectors: dict[str, DetectionPipeline],
    categories: Sequence[Category],
    pixel_size: int | None = 256,
    fpr_limit: float = 0.3,
    progress: bool = True,
    stop: StopRequest = NEVER,
    mask_threshold: float = 0.0,
) -> dict:
    """Report: per category, per detector metrics, plus skipped items and notes; and the mean.

    A stop request ends the run after the image in hand; the report covers the images scored
    so far and says so in `stopped`. `skipped_images` counts the unreadable images.
    """
    total = sum(len(c.samples) for c in categories)
    report: dict = {
        "categories": {},
        "mean": {},
        "pixel_size": pixel_size,
        "aupro_fpr_limit": fpr_limit,
        "mask_threshold": mask_threshold,
        "skipped_images": 0,
        "stopped": None,
    }
    seen = 0
    for category in stop.each(categories):
        collected = {name: _Collected() for name in detectors}
        skipped = list(category.problems)
        for sample in stop.each(tqdm(category.samples, desc=category.name, unit="img", disable=not progress)):
            seen += 1
            try:
                image = check_image(read_image(sample.image))
            except ImageReadError as exc:
                skipped.append(f"{exc}: image skipped")
                report["skipped_images"] += 1
                continue
            try:
                mask = load_mask(sample, image.shape[:2], mask_threshold)
            except ImageReadError as exc:
                skipped.append(f"{exc}: left out of pixel metrics")
                mask = None
            for name, detector in detectors.items():
                result = detector(image)
                store = collected[name]
                store.labels.append(sample.is_anomalous)
                store.scores.append(result.score)
                if mask is not None:
                    resized_map, resized_mask = _resize_pair(result.final_map, mask, pixel_size)
                    store.maps.append(resized_map)
                    store.masks.append(resized_mask)
        notes = []
        first = next(iter(collected.values()))
        if not any(first.labels):
            notes.append("no defective images: image metrics undefined (NaN)")
        elif all(first.labels):
            notes.append("no good images: image metrics undefined (NaN)")
        if not any(m.any() for m in first.masks):
            notes.append("no usable defect masks: pixel metrics undefined (NaN)")
        report["categories"][category.name] = {
            "images": len(first.labels),
            "metrics": {name: store.metrics(fpr_limit) for name, store in collected.items()},
            "skipped": skipped,
            "notes": notes,
        }
    if stop.requested:
        report["stopped"] = f"stopped by {stop.signal_name} after {seen} of {total} images; metrics cover those"
    for name in detectors:
        report["mean"][name] = {
            metric: float(np.nanmean([c["metrics"][name][metric] for c in report["categories"].values()]))
            if any(not math.isnan(c["metrics"][name][metric]) for c in report["categories"].values())
            else math.nan
            for metric in METRICS
        }
    return report


def format_report(report: dict) -> str:
    """Markdown table: one row per (category, detector), one column per metric."""
    lines = ["| category | detector | " + " | ".join(METRICS) + " |", "|---" * (2 + len(METRICS)) + "|"]
    rows = [(name, c["metrics"]) for name, c in report["categories"].items()] + [("mean", report["mean"])]
    for category, per_detector in rows:
        for detector, metrics in per_detector.items():
            lines.append(f"| {category} | {detector} | " + " | ".join(f"{metrics[m]:.4f}" for m in METRICS) + " |")
    return "\n".join(lines)
