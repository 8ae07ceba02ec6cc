"""`zsad-edge`: run a bundle on images and folders from the command line (no torch needed).

Every user-facing failure prints one `error: ...` line and exits non-zero; a folder run carries
on past unreadable images, lists them at the end and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .bundle import BASE_PRECISION
from .detector import Detector
from .errors import ImageReadError, ZsadEdgeError
from .image_io import check_image, list_images, read_image, write_bytes_atomic, write_image_atomic
from .components import BACKENDS
from .overlay import render_overlay

EXIT_ERROR = 2
EXIT_PARTIAL = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsad-edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect", help="score images and write JSON + heatmap overlays")
    detect.add_argument("bundle", type=Path, help="bundle folder written by export/build_engines.py")
    detect.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    detect.add_argument("--out", type=Path, required=True, help="output folder for <name>.json, <name>_overlay.png")
    detect.add_argument("--backend", choices=BACKENDS, default="auto")
    detect.add_argument("--precision", default=BASE_PRECISION, help="fp32 or a variant the bundle holds (see `info`)")
    detect.add_argument("--batch-size", type=int, default=1, help="images per model call")
    detect.add_argument("--no-verify", action="store_true", help="skip the sha256 check of bundle files")
    detect.add_argument("--memory-bank", type=Path, help="few-shot: a bank written by `zsad-edge fit-normal`")
    evaluate = sub.add_parser("eval", help="image/pixel AUROC, AP, F1-max and AUPRO on an MVTec-layout folder")
    evaluate.add_argument("bundle", type=Path)
    evaluate.add_argument("dataset", type=Path, help="a category folder (with test/) or a folder of categories")
    evaluate.add_argument("--out", type=Path, help="write the JSON report here")
    evaluate.add_argument("--reference", action="store_true",
                          help="also run the PyTorch reference rebuilt from the manifest (needs zsad-edge[export])")
    evaluate.add_argument("--clip-checkpoint", type=Path, help="with --reference: the bundle's CLIP checkpoint")
    evaluate.add_argument("--heads-checkpoint", type=Path, help="with --reference: the bundle's heads checkpoint")
    evaluate.add_argument("--sam-checkpoint", type=Path, help="with --reference: the bundle's SAM checkpoint")
    evaluate.add_argument("--pixel-size", type=int, default=256, help="pixel metrics at this square size (0: original)")
    evaluate.add_argument("--backend", choices=BACKENDS, default="auto")
    evaluate.add_argument("--precision", default=BASE_PRECISION, help="fp32 or a variant the bundle holds (see `info`)")
    evaluate.add_argument("--memory-bank", type=Path, help="few-shot: evaluate with this memory bank")
    calibrate = sub.add_parser("calibrate", help="set score ranges and thresholds from normal images")
    calibrate.add_argument("bundle", type=Path)
    calibrate.add_argument("normal_images", nargs="+", help="normal (defect-free) images and/or folders")
    calibrate.add_argument("--image-quantile", type=float, default=1.0,
                           help="image threshold = this quantile of normal image scores (1.0 = max)")
    calibrate.add_argument("--pixel-quantile", type=float, default=0.999,
                           help="map threshold = this quantile of normal map pixels")
    calibrate.add_argument("--backend", choices=BACKENDS, default="auto")
    calibrate.add_argument("--memory-bank", type=Path,
                           help="few-shot: calibrate with this bank and store the constants in the bank file")
    fit = sub.add_parser("fit-normal", help="few-shot: build an APRIL-GAN memory bank from k normal images")
    fit.add_argument("bundle", type=Path)
    fit.add_argument("normal_images", nargs="+", help="the k normal images and/or folders")
    fit.add_argument("--out", type=Path, required=True, help="memory bank file (.npz), kept next to the bundle")
    fit.add_argument("--shots", type=int, help="use the first K images only")
    fit.add_argument("--backend", choices=BACKENDS, default="auto")
    info = sub.add_parser("info", help="print a bundle's manifest summary")
    info.add_argument("bundle", type=Path)
    return parser


def _detector(bundle: Path, backend: str, memory_bank: Path | None = None, verify: bool = True,
              precision: str = BASE_PRECISION) -> Detector:
    detector = Detector.from_bundle(bundle, backend=backend, verify=verify, precision=precision)
    if memory_bank is not None:
        detector.load_memory_bank(memory_bank)
    return detector


def run_detect(bundle: Path, inputs: Sequence[str], out_dir: Path, backend: str = "auto", batch_size: int = 1,
               verify: bool = True, memory_bank: Path | None = None, precision: str = BASE_PRECISION) -> dict:
    """Detect on every image; returns the summary written to out_dir/summary.json."""
    detector = _detector(bundle, backend, memory_bank, verify, precision)
    weights = detector.manifest.clip.get("weights", {})
    if weights.get("kind") == "random":
        print(f"warning: {bundle} was built with {weights.get('warning', 'random weights')}", file=sys.stderr)
    paths = list_images(inputs)
    if not paths:
        raise ImageReadError(f"no images found in {', '.join(map(str, inputs))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    used_names: set[str] = set()
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        for (path, image), result in zip(pending, detector.detect_batch([im for _, im in pending])):
            name = _unique_name(path, used_names)
            summary = {"image": str(path), **result.summary()}
            write_bytes_atomic(out_dir / f"{name}.json", (json.dumps(summary, indent=2) + "\n").encode())
            sam_mask = result.refinement.mask if result.refinement is not None else None
            overlay = render_overlay(image, result.anomaly_map, result.mask, detector.manifest.scoring["map_max"],
                                     sam_mask=sam_mask)
            write_image_atomic(out_dir / f"{name}_overlay.png", overlay)
            if sam_mask is not None:
                write_image_atomic(out_dir / f"{name}_sam_mask.png", sam_mask.astype(np.uint8) * 255)
            results[str(path)] = summary
        pending.clear()

    for path in tqdm(paths, desc="detect", unit="img", disable=len(paths) < 2, file=sys.stderr):
        try:
            pending.append((path, check_image(read_image(path))))
        except ImageReadError as exc:
            failures[str(path)] = str(exc)
            tqdm.write(f"skipped: {exc}", file=sys.stderr)
            continue
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    summary = {"bundle": str(bundle), "precision": precision, "providers": detector.providers, "results": results,
               "failures": failures}
    write_bytes_atomic(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _unique_name(path: Path, used: set[str]) -> str:
    name, counter = path.stem, 1
    while name in used:
        counter += 1
        name = f"{path.stem}_{counter}"
    used.add(name)
    return name


def _print_info(bundle: Path) -> None:
    from .bundle import load_manifest

    manifest = load_manifest(bundle, verify_hashes=False)
    print(json.dumps({
        "method": manifest.method["name"],
        "clip": manifest.clip,
        "clipad_mode": manifest.method.get("params", {}).get("clipad_mode"),
        "preprocess": manifest.preprocess.to_dict(),
        "taps": manifest.taps,
        "components": {k: v.file for k, v in manifest.components.items()},
        "sam": manifest.method.get("params", {}).get("sam", {}).get("kind"),
        "precisions": {BASE_PRECISION: "as exported", **{name: variant["drift"] for name, variant in manifest.precisions.items()}},
        "scoring": manifest.scoring,
    }, indent=2))


def run_eval(args: argparse.Namespace) -> dict:
    """Evaluate the runtime (and optionally the reference) and print/write the report."""
    try:
        from zsad_edge.benchmarks.evaluate import evaluate, format_report
    except ImportError as exc:
        raise ZsadEdgeError(f"evaluation needs scikit-learn ({exc.name} missing): pip install 'zsad-edge[eval]'") from None
    from .dataset import scan_dataset

    categories = scan_dataset(args.dataset)
    detectors = {"runtime": _detector(args.bundle, args.backend, args.memory_bank, precision=args.precision)}
    if args.reference:
        try:
            from zsad_edge.export.build import reference_from_bundle
        except ImportError as exc:
            raise ZsadEdgeError(f"--reference needs the torch side ({exc.name} missing): pip install 'zsad-edge[export]'") from None
        detectors["reference"] = reference_from_bundle(args.bundle, args.clip_checkpoint, args.heads_checkpoint,
                                                       sam_checkpoint=args.sam_checkpoint)
        if args.memory_bank is not None:
            detectors["reference"].load_memory_bank(args.memory_bank)
    report = evaluate(detectors, categories, pixel_size=args.pixel_size or None)
    report["bundle"] = str(args.bundle)
    print(format_report(report))
    for name, category in report["categories"].items():
        for line in category["notes"] + category["skipped"]:
            print(f"  {name}: {line}")
    if args.out:
        write_bytes_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
    return report


def run_calibrate(args: argparse.Namespace) -> dict:
    """Calibrate on normal images and store the constants in the bundle's manifest."""
    from zsad_edge.calibration.scores import calibrate_memory_bank, calibrate_scores, write_scoring

    detector = _detector(args.bundle, args.backend, args.memory_bank)
    paths = list_images(args.normal_images)
    options = {"image_quantile": args.image_quantile, "pixel_quantile": args.pixel_quantile,
               "progress": len(paths) > 1}
    if detector.memory_bank is not None:
        scoring = calibrate_memory_bank(detector, paths, **options)
        detector.memory_bank.save(args.memory_bank)
        target = args.memory_bank
    else:
        scoring = calibrate_scores(detector, paths, **options)
        write_scoring(args.bundle, scoring)
        target = args.bundle
    print(f"calibrated on {scoring['calibration']['images']} normal image(s): image threshold "
          f"{scoring['image_threshold']:.6g}, map threshold {scoring['map_threshold']:.6g}; written to {target}")
    for reason in scoring["calibration"]["skipped"]:
        print(f"  skipped: {reason}")
    return scoring


def run_fit_normal(args: argparse.Namespace) -> None:
    """Build a few-shot memory bank and save it."""
    detector = _detector(args.bundle, args.backend)
    paths = list_images(args.normal_images)[:args.shots]
    if not paths:
        raise ImageReadError(f"no images found in {', '.join(args.normal_images)}")
    bank = detector.fit_normal([str(p) for p in paths])
    bank.save(args.out)
    print(f"memory bank of {bank.shots} shot(s), {bank.tokens.shape[1]} tokens per tap, written to {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.command == "info":
            _print_info(args.bundle)
            return 0
        if args.command == "eval":
            run_eval(args)
            return 0
        if args.command == "calibrate":
            run_calibrate(args)
            return 0
        if args.command == "fit-normal":
            run_fit_normal(args)
            return 0
        if args.batch_size < 1:
            raise ZsadEdgeError("--batch-size must be at least 1")
        summary = run_detect(args.bundle, args.inputs, args.out, args.backend, args.batch_size, not args.no_verify,
                             args.memory_bank, args.precision)
    except ZsadEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    done, failed = len(summary["results"]), len(summary["failures"])
    if not done:
        reasons = "; ".join(summary["failures"].values())
        print(f"error: no image could be read: {reasons}", file=sys.stderr)
        return EXIT_ERROR
    flagged = sum(r["is_anomalous"] for r in summary["results"].values())
    print(f"{done} image(s) scored, {flagged} flagged anomalous, {failed} skipped; results in {args.out}")
    for path, reason in summary["failures"].items():
        print(f"  skipped {path}: {reason}")
    return EXIT_PARTIAL if failed else 0


if __name__ == "__main__":
    sys.exit(main())
