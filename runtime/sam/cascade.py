"""CLIP-SAM: refine a CLIP anomaly map with SAM through cascaded prompts, in the lean runtime.

For each connected anomalous region of the CLIP map (pixels above the region threshold), three
decoder passes on one SAM encoder run, in one of two prompt modes:
- "points" (CLIP-SAM as published, for segment_anything's SAMs): positive points are the top-k
  peaks of the map inside the region, at least `point_spacing` apart; negative points lie on a
  ring around the region (dilation minus every anomalous pixel): the k points whose SAM image
  feature is LEAST similar (cosine) to the region's mean SAM feature. Passes: (1) points;
  (2) points + pass-1 mask logits; (3) points + the box of the pass-2 mask + pass-2 logits.
- "box" (an option for SAMs trained on box prompts only, like LiteMedSAM): (1) the CLIP region's
  box; (2) that box + pass-1 logits; (3) the box of the pass-2 mask + pass-2 logits. End to end
  on battery_weld with LiteMedSAM the published points cascade scored higher (pixel F1 0.789 vs
  0.738, benchmarks/sam_refinement.py), so "points" is the default for every SAM.
Regions with the same number of points run together as one decoder batch. A region whose final
SAM mask is empty keeps its CLIP pixels, and so does one whose mask agrees with the CLIP region
(IoU) less than `min_agreement`. That gate is off by default (as published); it exists for SAMs
that do not fit the domain: LiteMedSAM's battery_weld masks reach a mean IoU of 0.154 against the
truth where the region they start from reaches 0.818, worse on every image, and a 0.5 gate turns
the cascade from harmful (F1 0.922
-> 0.789) into neutral (0.922), benchmarks/sam_refinement.py --min-agreement 0.5. A correct mask of
a thin defect inside a blobby CLIP region can agree < 0.5, hence not on by default.

Fusion rule (documented default, weight w = 0.5): refined mask = union of the region masks;
refined map = (1 - w) * CLIP map + w * B, where B is each region's CLIP peak inside that region's
SAM mask (the largest where masks overlap) and 0 elsewhere. Inside SAM's outline the map rises
toward the defect's peak; outside it the map is damped, so thresholds and rankings on the refined
map follow SAM's outline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

import cv2
import numpy as np

from ..errors import BundleError
from ..image_io import to_rgb_float
from .predictor import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NEGATIVE, PAD, POSITIVE, SamGeometry, SamImage

PROMPT_MODES = ("points", "box")


@dataclass(frozen=True)
class CascadeConfig:
    """Every threshold and k of the cascade; stored in the manifest, defaults documented here.

    prompt_mode: "points" (default, as published) or "box" (see the module docstring).
    region_threshold: None = the bundle's map threshold (calibrated with `zsad-edge calibrate`).
    point_spacing / ring_width: fractions of the image's longer side (at least one pixel).
    min_agreement: a region's SAM mask with IoU below this against the CLIP region is rejected
    (the region keeps its CLIP pixels); 0 accepts every non-empty mask.
    """

    prompt_mode: str = "points"
    region_threshold: float | None = None
    max_regions: int = 8
    positive_points: int = 3
    negative_points: int = 3
    point_spacing: float = 0.03
    ring_width: float = 0.03
    fusion_weight: float = 0.5
    min_agreement: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.prompt_mode not in PROMPT_MODES:
            problems.append(f"prompt_mode {self.prompt_mode!r} is not one of {', '.join(PROMPT_MODES)}")
        if min(self.max_regions, self.positive_points) < 1 or self.negative_points < 0:
            problems.append("max_regions and positive_points must be >= 1, negative_points >= 0")
        for name in ("fusion_weight", "min_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} {getattr(self, name)} is outside [0, 1]")
        if problems:
            raise BundleError(f"invalid CLIP-SAM cascade settings: {'; '.join(problems)}")

    @classmethod
    def from_params(cls, params: dict) -> "CascadeConfig":
        try:
            return cls(**params)
        except TypeError as exc:
            raise BundleError(f"invalid CLIP-SAM cascade settings in the manifest: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor(Protocol):
    """What the cascade needs from a SAM: the runtime's SamPredictor and the torch reference both fit."""

    geometry: SamGeometry

    def encode(self, rgb: np.ndarray) -> SamImage: ...

    def decode(
        self, image: SamImage, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class SamRefinement:
    """The refined result of one image: mask and map at its original size, plus one record per region."""

    mask: np.ndarray
    anomaly_map: np.ndarray
    regions: list[dict] = field(default_factory=list)


def top_peaks(values: np.ndarray, allowed: np.ndarray, count: int, spacing: int) -> np.ndarray:
    """Up to `count` (x, y) maxima of `values` over `allowed` pixels, each `spacing` px from the others."""
    candidates = np.where(allowed, values, -np.inf).astype(np.float64)
    points = []
    for _ in range(count):
        flat = int(np.argmax(candidates))
        if not np.isfinite(candidates.flat[flat]):
            break
        y, x = divmod(flat, candidates.shape[1])
        points.append((x, y))
        cv2.circle(candidates, (x, y), spacing, -np.inf, thickness=-1)
        candidates[y, x] = -np.inf  # spacing 0 still removes the point itself
    return np.array(points, dtype=np.float32).reshape(-1, 2)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    return float((a & b).sum() / max(int((a | b).sum()), 1))


def select_masks(iou: np.ndarray, low_res: np.ndarray, ambiguous: bool) -> tuple[np.ndarray, np.ndarray]:
    """SAM's advice: a lone point is ambiguous, take the best of the three multimask answers;
    otherwise the single-mask answer. [P, 4] / [P, 4, l, l] -> [P] / [P, l, l]."""
    index = 1 + np.argmax(iou[:, 1:], axis=1) if ambiguous else np.zeros(len(iou), int)
    rows = np.arange(len(iou))
    return iou[rows, index], low_res[rows, index]


class _FeatureLookup:
    """One image's unit SAM features and the embedding cell under each original pixel, built once
    per image and shared by every region's negative-point search."""

    def __init__(self, image: SamImage, geometry: SamGeometry) -> None:
        height, width = image.original_size
        new_h, new_w = geometry.resized_size(height, width)
        cell = geometry.input_size / geometry.embedding_grid[0]  # model pixels per embedding cell
        self.cols = np.minimum((np.arange(width) + 0.5) * new_w / width // cell, geometry.embedding_grid[1] - 1).astype(
            int
        )
        self.rows = np.minimum(
            (np.arange(height) + 0.5) * new_h / height // cell, geometry.embedding_grid[0] - 1
        ).astype(int)
        features = image.embedding[0]  # [C, g, g]
        self.features = features
        self.unit = features / np.maximum(np.linalg.norm(features, axis=0, keepdims=True), 1e-12)

    def similarity(self, region: np.ndarray) -> np.ndarray:
        """Cosine similarity of every pixel's SAM feature to the region's mean feature, at original size."""
        region_rows, region_cols = np.nonzero(region)
        mean = self.features[:, self.rows[region_rows], self.cols[region_cols]].mean(axis=1)
        similarity = np.tensordot(mean / max(float(np.linalg.norm(mean)), 1e-12), self.unit, axes=1)  # [g, g]
        return similarity[self.rows[:, None], self.cols[None, :]]


def _mask_box(low_res: np.ndarray, geometry: SamGeometry) -> np.ndarray | None:
    """Box (x0, y0, x1, y1) in model pixels of a low-res mask, or None when it is empty."""
    rows, cols = np.nonzero(low_res > geometry.mask_threshold)
    if rows.size == 0:
        return None
    scale = geometry.input_size / geometry.low_res_size
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32) * scale


def refine(
    predictor: Predictor, rgb: np.ndarray, anomaly_map: np.ndarray, region_threshold: float, config: CascadeConfig
) -> SamRefinement:
    """Run the cascade for every anomalous region of `anomaly_map` (original size) on `rgb`."""
    anomalous = anomaly_map > region_threshold
    count, labels = cv2.connectedComponents(anomalous.astype(np.uint8), connectivity=8)
    if count <= 1:  # no region: nothing for SAM to refine, the encoder is not even run
        return SamRefinement(np.zeros_like(anomalous), anomaly_map.copy())
    peaks = [(float(anomaly_map[labels == r].max()), r) for r in range(1, count)]
    regions = [r for _, r in sorted(peaks, reverse=True)[: config.max_regions]]
    geometry = predictor.geometry
    image = predictor.encode(rgb)
    longer = max(anomaly_map.shape)
    spacing = max(1, round(config.point_spacing * longer))
    ring_kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * max(1, round(config.ring_width * longer)) + 1,) * 2)

    lookup = _FeatureLookup(image, geometry) if config.prompt_mode == "points" else None
    prompts = []
    for r in regions:
        region = labels == r
        if config.prompt_mode == "box":
            points, point_labels = np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
        else:
            positives = top_peaks(anomaly_map, region, config.positive_points, spacing)
            ring = cv2.dilate(region.astype(np.uint8), ring_kernel).astype(bool) & ~anomalous
            negatives = np.zeros((0, 2), np.float32)
            if ring.any() and config.negative_points > 0:
                negatives = top_peaks(-lookup.similarity(region), ring, config.negative_points, spacing)
            points = geometry.to_model_coords(np.concatenate([positives, negatives]), image.original_size)
            point_labels = np.array([POSITIVE] * len(positives) + [NEGATIVE] * len(negatives), np.float32)
        prompts.append((r, region, points, point_labels))

    final_logits = {}
    by_size: dict[int, list] = {}
    for prompt in prompts:
        by_size.setdefault(len(prompt[2]), []).append(prompt)
    for group in by_size.values():
        for r, logits, record in _cascade(predictor, image, group):
            final_logits[r] = (logits, record)

    mask = np.zeros_like(anomalous)
    lift = np.zeros(anomaly_map.shape, np.float32)
    records = []
    for r, region, _, _ in prompts:
        logits, record = final_logits[r]
        region_mask = geometry.logits_to_original(logits[None], image.original_size)[0] > geometry.mask_threshold
        agreement = mask_iou(region_mask, region)
        record["clip_agreement"] = round(agreement, 4)
        record["fallback_to_clip"] = not region_mask.any() or agreement < config.min_agreement
        if record["fallback_to_clip"]:
            region_mask = region
        peak = float(anomaly_map[region].max())
        np.maximum(lift, np.where(region_mask, peak, 0.0), out=lift)
        mask |= region_mask
        records.append(record)
    weight = config.fusion_weight
    refined = ((1.0 - weight) * anomaly_map + weight * lift).astype(np.float32)
    return SamRefinement(mask, refined, records)


def _region_box(region: np.ndarray, image: SamImage, geometry: SamGeometry) -> np.ndarray:
    """The box of a CLIP region, as two corners [2, 2] in model pixels."""
    rows, cols = np.nonzero(region)
    corners = np.array([[cols.min(), rows.min()], [cols.max() + 1, rows.max() + 1]], np.float32)
    return geometry.to_model_coords(corners, image.original_size)


def _cascade(predictor: Predictor, image: SamImage, group: list) -> list[tuple[int, np.ndarray, dict]]:
    """The three passes for regions with the same number of points, as one decoder batch per pass.

    With points: passes 1-2 end with one padding point, as segment_anything adds when no box is
    given. Without points (box mode) passes 1-2 use the CLIP region's box.
    """
    geometry = predictor.geometry
    count = len(group)
    points = np.stack([p[2] for p in group]).reshape(count, -1, 2)  # [P, K, 2]
    labels = np.stack([p[3] for p in group]).reshape(count, -1)  # [P, K]
    corner_labels = np.tile(np.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], np.float32), (count, 1))
    region_boxes = np.stack([_region_box(p[1], image, geometry) for p in group])
    if points.shape[1]:
        first = (
            np.concatenate([points, np.zeros((count, 1, 2), np.float32)], axis=1),
            np.concatenate([labels, np.full((count, 1), PAD, np.float32)], axis=1),
        )
    else:
        first = (region_boxes, corner_labels)
    ambiguous = points.shape[1] == 1
    iou, low_res = select_masks(*predictor.decode(image, *first), ambiguous)
    iou, low_res = select_masks(*predictor.decode(image, *first, low_res), ambiguous)
    boxes = []
    for logits, region_box in zip(low_res, region_boxes):
        box = _mask_box(logits, geometry)  # pass 2 found nothing: the CLIP region's box
        boxes.append(region_box if box is None else box.reshape(2, 2))
    final = (np.concatenate([points, np.stack(boxes)], axis=1), np.concatenate([labels, corner_labels], axis=1))
    iou, low_res = select_masks(*predictor.decode(image, *final, low_res), False)
    return [
        (
            r,
            logits,
            {
                "positive_points": int((lab == POSITIVE).sum()),
                "negative_points": int((lab == NEGATIVE).sum()),
                "box_model_px": box.ravel().round(2).tolist(),
                "sam_iou": float(score),
            },
        )
        for (r, _, _, lab), logits, box, score in zip(group, low_res, boxes, iou)
    ]


@dataclass
class SamRefinementStage:
    """The result stage of CLIP-SAM bundles: refine every image flagged anomalous (the rest need no outline).

    map_threshold: the pipeline's threshold at call time (calibration or a memory bank changes it),
    the region threshold unless the cascade config fixes one.
    """

    predictor: Predictor
    config: CascadeConfig
    map_threshold: Callable[[], float]

    def __call__(self, results: Sequence[Any], images: Sequence[np.ndarray]) -> None:
        threshold = self.config.region_threshold
        threshold = self.map_threshold() if threshold is None else threshold
        for result, image in zip(results, images):
            if result.is_anomalous:
                result.refinement = refine(
                    self.predictor, to_rgb_float(image), result.anomaly_map, threshold, self.config
                )


def attach_sam(pipeline, predictor: Predictor) -> None:
    """Add CLIP-SAM refinement, with the cascade constants of the pipeline's manifest, as a result stage."""
    config = CascadeConfig.from_params(pipeline.manifest.method["params"]["sam"]["cascade"])
    pipeline.result_stages.append(SamRefinementStage(predictor, config, lambda: pipeline.map_threshold))
