"""SAM quality and CLIP-SAM refinement on an MVTec-layout folder, through the exported ONNX graphs.

Two numbers per data set, from ground-truth masks (no CLIP needed, so real SAM weights measure
SAM itself):
1. box IoU: SAM prompted with the box of every connected ground-truth component; mean IoU of the
   union against the mask, per image.
2. cascade: a CLIP-like map stands in for CLIP (the ground-truth mask blurred with a Gaussian of
   `--blur` px and scaled to peak 1); pixel F1-max of that map alone vs of the map refined by
   the CLIP-SAM cascade (region threshold 0.5), over all defective images; and the mean IoU against
   the ground truth of the cascade's mask vs of the stand-in region it started from.

  python benchmarks/sam_refinement.py ../shared/data/battery_weld
  python benchmarks/sam_refinement.py ../shared/data/battery_weld --prompt-mode box
  python benchmarks/sam_refinement.py ../shared/data/battery_weld --min-agreement 0.5
  python benchmarks/sam_refinement.py ../shared/data/battery_weld --sam vit_b --sam-checkpoint sam_vit_b.pth
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from zsad_edge.benchmarks.reports import write_report
from zsad_edge.export.defaults import SAM_KINDS
from zsad_edge.runtime.backends.ort import OrtComponent
from zsad_edge.runtime.evaluation.dataset import load_mask, sample_across_defects, scan_dataset
from zsad_edge.runtime.evaluation.metrics import f1_max
from zsad_edge.runtime.image_io import read_image, to_rgb_float
from zsad_edge.runtime.sam.cascade import PROMPT_MODES, CascadeConfig, mask_iou, refine
from zsad_edge.runtime.sam.predictor import SamGeometry, SamPredictor


def component_box_iou(predictor: SamPredictor, image, mask: np.ndarray) -> float:
    """IoU of the union of SAM's answers to the box of each ground-truth component."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    union = np.zeros_like(mask)
    for x, y, width, height, _ in stats[1:count]:
        union |= predictor.predict_box(image, np.array([x, y, x + width, y + height], np.float32))[0]
    return mask_iou(union, mask)


def stand_in_map(mask: np.ndarray, blur: float) -> np.ndarray:
    """The ground truth blurred into a coarse CLIP-like map with peak 1."""
    blurred = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), blur)
    return blurred / max(float(blurred.max()), 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--sam", choices=SAM_KINDS, default="litemedsam")
    parser.add_argument("--sam-checkpoint", type=Path)
    parser.add_argument("--prompt-mode", choices=PROMPT_MODES, default="points")
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=0.0,
        help="cascade gate: reject SAM masks with IoU below this against the CLIP region",
    )
    parser.add_argument("--blur", type=float, default=16.0, help="stand-in map: Gaussian sigma in px")
    parser.add_argument(
        "--max-images", type=int, help="N defective images with masks, drawn evenly across defect types (seeded)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-images draw")
    parser.add_argument("--out", type=Path, help="JSON path (default ./sam_refinement_<sam>_<mode>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from zsad_edge.export.graphs.sam_graphs import export_sam_graphs
    from zsad_edge.export.models.sam import SamSpec, load_sam

    sam = load_sam(SamSpec(args.sam, checkpoint=args.sam_checkpoint))
    mode = args.prompt_mode
    config = CascadeConfig(prompt_mode=mode, min_agreement=args.min_agreement)
    samples = sample_across_defects(
        [s for c in scan_dataset(args.dataset) for s in c.samples if s.mask is not None], args.max_images, args.seed
    )
    with tempfile.TemporaryDirectory() as scratch:
        export_sam_graphs(sam, Path(scratch), tolerance=1e-4)
        predictor = SamPredictor(
            OrtComponent(Path(scratch) / "sam_encoder.onnx"),
            OrtComponent(Path(scratch) / "sam_decoder.onnx"),
            SamGeometry(sam.input_size, sam.pixel_mean, sam.pixel_std, sam.embedding_grid),
        )
        ious, maps, refined, truths, mask_ious, region_ious = [], [], [], [], [], []
        for sample in tqdm(samples, desc="images", unit="img"):
            rgb = to_rgb_float(read_image(sample.image))
            mask = load_mask(sample, rgb.shape[:2])
            if mask is None or not mask.any():
                continue
            ious.append(component_box_iou(predictor, predictor.encode(rgb), mask))
            coarse = stand_in_map(mask, args.blur)
            result = refine(predictor, rgb, coarse, 0.5, config)
            refined.append(result.anomaly_map.ravel())
            mask_ious.append(mask_iou(result.mask, mask))
            region_ious.append(mask_iou(coarse > 0.5, mask))
            maps.append(coarse.ravel())
            truths.append(mask.ravel())
    truth = np.concatenate(truths)
    report = {
        "benchmark": "sam_refinement",
        "dataset": str(args.dataset),
        "sam": args.sam,
        "weights": sam.weights_origin,
        "prompt_mode": mode,
        "min_agreement": args.min_agreement,
        "images": len(ious),
        "blur_sigma_px": args.blur,
        "box_iou_mean": float(np.mean(ious)),
        "box_iou_median": float(np.median(ious)),
        "mask_iou_vs_truth": {
            "cascade_mask": float(np.mean(mask_ious)),
            "stand_in_region": float(np.mean(region_ious)),
            "images_where_cascade_is_better": float(np.mean(np.greater(mask_ious, region_ious))),
        },
        "pixel_f1_max": {
            "stand_in_map": f1_max(truth, np.concatenate(maps)),
            "cascade_refined": f1_max(truth, np.concatenate(refined)),
        },
    }
    f1 = report["pixel_f1_max"]
    print(f"{args.sam} ({mode} prompts) on {report['images']} defective images of {args.dataset}:")
    print(
        f"  ground-truth component boxes -> mean IoU {report['box_iou_mean']:.3f} "
        f"(median {report['box_iou_median']:.3f})"
    )
    print(
        f"  pixel F1-max: stand-in map (GT blurred, sigma {args.blur:g}) {f1['stand_in_map']:.4f}, "
        f"after the cascade {f1['cascade_refined']:.4f}"
    )
    gate = f"_gate{args.min_agreement:g}" if args.min_agreement else ""
    iou = report["mask_iou_vs_truth"]
    print(
        f"  mask IoU vs truth: cascade {iou['cascade_mask']:.3f}, "
        f"stand-in region (map > 0.5) {iou['stand_in_region']:.3f}; "
        f"cascade better on {100 * iou['images_where_cascade_is_better']:.0f} % of images"
    )
    write_report(report, args.out, f"sam_refinement_{args.sam}_{mode}{gate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
