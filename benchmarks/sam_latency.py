"""SAM latency: image encoder, one decoder pass, and the whole CLIP-SAM cascade, torch vs onnxruntime.

The torch side is the reference predictor (segment_anything's modules through their API), the
runtime side the exported graphs; both see the same preprocessed image and prompts. Each stage
runs in alternating blocks after warm-up (see timing.py); medians are reported.

  python benchmarks/sam_latency.py --prompt-mode box   # LiteMedSAM (packaged weights)
  python benchmarks/sam_latency.py --sam vit_b --random-sam --runs 5
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from zsad_edge.benchmarks.reports import machine_info, write_report
from zsad_edge.export.defaults import SAM_KINDS
from zsad_edge.runtime.backends.ort import OrtComponent
from zsad_edge.runtime.sam.cascade import PROMPT_MODES, CascadeConfig, refine
from zsad_edge.runtime.sam.predictor import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, SamGeometry, SamPredictor


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 400x256 textured part with two bright defects, and a coarse map of them."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((256, 400), np.uint8)
    cv2.circle(mask, (120, 100), 30, 1, -1)
    cv2.rectangle(mask, (260, 150), (330, 200), 1, -1)
    image = cv2.GaussianBlur(rng.normal(0.45, 0.12, mask.shape).astype(np.float32), (0, 0), 3)
    image[mask > 0] = 0.85
    coarse = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 12)
    return np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2), coarse / coarse.max()


def _median_ms(function, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", choices=SAM_KINDS, default="litemedsam")
    parser.add_argument("--sam-checkpoint", type=Path)
    parser.add_argument("--random-sam", action="store_true", help="random weights (speed does not depend on them)")
    parser.add_argument("--prompt-mode", choices=PROMPT_MODES, default="points")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON path (default ./sam_latency_<sam>.json)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from zsad_edge.export.graphs.sam_graphs import export_sam_graphs
    from zsad_edge.export.models.sam import SamSpec, load_sam
    from zsad_edge.export.references.sam_predictor import ReferenceSamPredictor

    sam = load_sam(SamSpec(args.sam, checkpoint=args.sam_checkpoint, random_init=args.random_sam))
    geometry = SamGeometry(sam.input_size, sam.pixel_mean, sam.pixel_std, sam.embedding_grid)
    rgb, coarse = _scene()
    config = CascadeConfig(prompt_mode=args.prompt_mode)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        export_sam_graphs(sam, Path(scratch), tolerance=1e-4)
        predictors = {
            "torch_eager_fp32": ReferenceSamPredictor(sam, geometry),
            "onnxruntime_fp32": SamPredictor(
                OrtComponent(Path(scratch) / "sam_encoder.onnx"),
                OrtComponent(Path(scratch) / "sam_decoder.onnx"),
                geometry,
            ),
        }
        box = geometry.to_model_coords(np.array([[90, 70], [150, 130]], np.float32), rgb.shape[:2])[None]
        labels = np.array([[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]], np.float32)
        for name, predictor in predictors.items():
            image = predictor.encode(rgb)
            regions = len(refine(predictor, rgb, coarse, 0.5, config).regions)
            results[name] = {
                "encoder": _median_ms(lambda: predictor.encode(rgb), args.runs, args.warmup),
                "decoder_pass": _median_ms(lambda: predictor.decode(image, box, labels), args.runs, args.warmup),
                "cascade_total": _median_ms(
                    lambda: refine(predictor, rgb, coarse, 0.5, config), args.runs, args.warmup
                ),
            }
    base = results["torch_eager_fp32"]
    print(
        f"{args.sam} @ {sam.input_size}px, {config.prompt_mode} prompts, cascade over {regions} region(s) "
        f"(encoder + 3 decoder passes + pre/post), median of {args.runs}\n"
    )
    print("| stage | torch eager fp32 (ms) | onnxruntime fp32 (ms) | speed-up |\n|---|---|---|---|")
    for stage in base:
        ort = results["onnxruntime_fp32"][stage]
        print(f"| {stage} | {base[stage]:.1f} | {ort:.1f} | {base[stage] / ort:.2f}x |")
    report = {
        "benchmark": "sam_latency",
        "sam": args.sam,
        "weights": sam.weights_origin["kind"],
        "input_size": sam.input_size,
        "prompt_mode": config.prompt_mode,
        "regions": regions,
        "runs": args.runs,
        "machine": machine_info(),
        "median_ms": results,
    }
    write_report(report, args.out, f"sam_latency_{args.sam}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
