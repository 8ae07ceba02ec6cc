"""Evaluating detectors on MVTec-layout folders: image and pixel metrics per category and mean.

Several detectors (the runtime and the PyTorch reference) run on the same images, so their
metrics sit side by side. Pixel metrics are computed with maps and masks resized so that
their longest side is `pixel_size` (bilinear maps, nearest masks, aspect ratio kept), which keeps
memory bounded for large sets; pass None to keep original sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..archive.ray_data import RayOptions, ray_outcomes
from ..archive.rows import Row, local_outcomes, rows_of
from ..detector import DetectorSpec
from ..errors import ImageReadError, ZsadEdgeError
from ..image_io import read_image
from ..pipeline import DetectionPipeline
from ..stopping import NEVER, StopRequest
from .dataset import Category, Sample, load_mask
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


def evaluation_sample(detector, images: list[np.ndarray], rows: list[Row], context: tuple) -> list[tuple]:
    """What evaluation keeps of each test image: its score, and its final map and ground-truth mask
    at the metric size (or why the mask was left out). The archive `work` of eval."""
    pixel_size, mask_threshold = context
    samples = []
    for image, result, row in zip(images, detector.detect_batch(images), rows):
        tag = json.loads(row["tag"])
        sample = Sample(Path(row["path"]), tag["defect"], Path(tag["mask"]) if tag["mask"] else None)
        try:
            mask, problem = load_mask(sample, image.shape[:2], mask_threshold), None
        except ImageReadError as exc:
            mask, problem = None, f"{exc}: left out of pixel metrics"
        pair = _resize_pair(result.final_map, mask, pixel_size) if mask is not None else None
        samples.append((result.score, pair, problem))
    return samples


def _rows(category: Category) -> list[Row]:
    tags = [json.dumps({"defect": s.defect, "mask": str(s.mask) if s.mask else None}) for s in category.samples]
    return rows_of([sample.image for sample in category.samples], tags)


def evaluate(
    detectors: dict[str, DetectionPipeline],
    categories: Sequence[Category],
    pixel_size: int | None = 256,
    fpr_limit: float = 0.3,
    progress: bool = True,
    stop: StopRequest = NEVER,
    mask_threshold: float = 0.0,
    ray: tuple[DetectorSpec, RayOptions] | None = None,
) -> dict:
    """Report: per category, per detector metrics, plus skipped items and notes; and the mean.

    A stop request ends the run after the image in hand; the report covers the images scored
    so far and says so in `stopped`. `skipped_images` counts the unreadable images. With `ray`
    (one detector), the images are scored on a Ray actor pool; the metrics are the same.
    """
    if ray is not None and len(detectors) != 1:
        raise ZsadEdgeError("--ray scores with the runtime only: leave out --reference")
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
    context = (pixel_size, mask_threshold)
    for category in stop.each(categories):
        collected = {name: _Collected() for name in detectors}
        skipped = list(category.problems)
        rows = _rows(category)
        for position, (name, detector) in enumerate(detectors.items()):
            if ray is None:
                outcomes = local_outcomes(detector, rows, evaluation_sample, context, 1, stop, read_image)
            else:
                outcomes = ray_outcomes(rows, ray[0], evaluation_sample, context, ray[1], stop, read_image)
            store, first = collected[name], position == 0
            bar = tqdm(outcomes, total=len(rows), desc=category.name, unit="img", disable=not progress)
            for row, scored, value in bar:
                seen += first
                if not scored:
                    if first:
                        skipped.append(f"{value}: image skipped")
                        report["skipped_images"] += 1
                    continue
                score, pair, problem = value
                store.labels.append(category.samples[row["index"]].is_anomalous)
                store.scores.append(score)
                if problem and first:
                    skipped.append(problem)
                if pair is not None:
                    store.maps.append(pair[0])
                    store.masks.append(pair[1])
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
