"""`zsad-edge`: run a bundle on images and folders from the command line (no torch needed).

Exit codes: 0 done; 1 done but some images were skipped (unreadable; listed); 2 an error, one
`error: ...` line; 130 / 143 stopped by SIGINT / SIGTERM (runtime/stopping.py: detect and eval
write what they have, calibrate and fit-normal leave the manifest or bank as it was).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from .bundle import BASE_PRECISION
from .components import BACKENDS
from .detect_run import detect_jobs, plan_jobs, run_record, uncalibrated_warning
from .detector import Detector
from .errors import ImageReadError, ZsadEdgeError
from .image_io import check_image, list_images, write_bytes_atomic
from .stopping import NEVER, StopRequest, Stopped

EXIT_ERROR = 2
EXIT_PARTIAL = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsad-edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    detect = sub.add_parser("detect", help="score images and write JSON + heatmap overlays")
    detect.add_argument("bundle", type=Path, help="bundle folder written by export/build_engines.py")
    detect.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    detect.add_argument("--out", type=Path, required=True,
                        help="output folder; mirrors the input folders' layout (<name>.json, <name>_overlay.png)")
    detect.add_argument("--resume", action="store_true", help="skip images whose results are already in --out")
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
    evaluate.add_argument("--pixel-size", type=int, default=256,
                          help="pixel metrics with the longest side at this size, aspect kept (0: original size)")
    evaluate.add_argument("--mask-threshold", type=float, default=0.0,
                          help="a mask pixel is a defect above this fraction of full scale (0: any non-zero)")
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
    fit.add_argument("--shots", type=int, help="use the first K readable images only (K >= 1)")
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
               verify: bool = True, memory_bank: Path | None = None, precision: str = BASE_PRECISION,
               resume: bool = False, stop: StopRequest = NEVER) -> dict:
    """Detect on every image; returns the summary written to out_dir/summary.json."""
    detector = _detector(bundle, backend, memory_bank, verify, precision)
    weights = detector.manifest.clip.get("weights", {})
    if weights.get("kind") == "random":
        print(f"warning: {bundle} was built with {weights.get('warning', 'random weights')}", file=sys.stderr)
    jobs = plan_jobs(inputs, out_dir)
    if not jobs:
        raise ImageReadError(f"no images found in {', '.join(map(str, inputs))}")
    return detect_jobs(detector, jobs, out_dir, run_record(detector, bundle, precision, memory_bank), batch_size,
                       resume, stop)


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


def run_eval(args: argparse.Namespace, stop: StopRequest = NEVER) -> int:
    """Evaluate the runtime (and optionally the reference), print/write the report; the exit code."""
    try:
        from zsad_edge.benchmarks.evaluate import evaluate, format_report
    except ImportError as exc:
        raise ZsadEdgeError(f"evaluation needs scikit-learn ({exc.name} missing): pip install 'zsad-edge[eval]'") from None
    from .dataset import scan_dataset

    if not 0.0 <= args.mask_threshold < 1.0:
        raise ZsadEdgeError(f"--mask-threshold must be in [0, 1), got {args.mask_threshold}")
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
    report = evaluate(detectors, categories, pixel_size=args.pixel_size or None, stop=stop,
                      mask_threshold=args.mask_threshold)
    report["bundle"] = str(args.bundle)
    print(format_report(report))
    for name, category in report["categories"].items():
        for line in category["notes"] + category["skipped"]:
            print(f"  {name}: {line}")
    if args.out:
        write_bytes_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
    if report["stopped"]:
        print(report["stopped"] + (f"; report in {args.out}" if args.out else ""))
        return stop.exit_code
    return EXIT_PARTIAL if report["skipped_images"] else 0


def run_calibrate(args: argparse.Namespace, stop: StopRequest = NEVER) -> dict:
    """Calibrate on normal images and store the constants in the bundle's manifest."""
    from zsad_edge.calibration.scores import calibrate_memory_bank, calibrate_scores, write_scoring

    detector = _detector(args.bundle, args.backend, args.memory_bank)
    paths = list_images(args.normal_images)
    options = {"image_quantile": args.image_quantile, "pixel_quantile": args.pixel_quantile,
               "progress": len(paths) > 1, "stop": stop}
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


def run_fit_normal(args: argparse.Namespace, stop: StopRequest = NEVER) -> None:
    """Build a few-shot memory bank from the first K readable images and save it; unreadable ones are listed."""
    if args.shots is not None and args.shots < 1:
        raise ZsadEdgeError(f"--shots must be at least 1, got {args.shots}")
    detector = _detector(args.bundle, args.backend)
    paths = list_images(args.normal_images)
    if not paths:
        raise ImageReadError(f"no images found in {', '.join(args.normal_images)}")
    images, skipped = [], []
    for path in stop.each(tqdm(paths, desc="fit-normal", unit="img", disable=len(paths) < 2, file=sys.stderr)):
        if args.shots is not None and len(images) == args.shots:
            break
        try:
            images.append(check_image(detector.read(path)))
        except ImageReadError as exc:
            skipped.append(str(exc))
    if stop.requested:
        raise Stopped(stop, len(images) + len(skipped), len(paths), "no memory bank written")
    if not images:
        raise ImageReadError(f"none of the {len(paths)} image(s) could be read: {'; '.join(skipped)}")
    bank = detector.fit_normal(images, stop=stop)
    bank.save(args.out)
    print(f"memory bank of {bank.shots} shot(s), {bank.tokens.shape[1]} tokens per tap, written to {args.out}")
    for reason in skipped:
        print(f"  skipped: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        with StopRequest() as stop:
            return _run(args, stop)
    except Stopped as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except ZsadEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:  # a second signal: stop at once, still one line
        print("stopped at once by a second signal; the image in hand was dropped", file=sys.stderr)
        return 128 + signal.SIGINT


def _run(args: argparse.Namespace, stop: StopRequest) -> int:
    if args.command == "info":
        _print_info(args.bundle)
        return 0
    if args.command == "eval":
        return run_eval(args, stop)
    if args.command == "calibrate":
        run_calibrate(args, stop)
        return 0
    if args.command == "fit-normal":
        run_fit_normal(args, stop)
        return 0
    if args.batch_size < 1:
        raise ZsadEdgeError("--batch-size must be at least 1")
    summary = run_detect(args.bundle, args.inputs, args.out, args.backend, args.batch_size, not args.no_verify,
                         args.memory_bank, args.precision, args.resume, stop)
    return _report_detect(summary, args.out, stop)


def _report_detect(summary: dict, out_dir: Path, stop: StopRequest) -> int:
    """One line (plus the skipped files) and the exit code of a detect run."""
    scored, failed = summary["scored"], summary["skipped"]
    if not scored and failed and not stop.requested:
        raise ImageReadError(f"no image could be read: {'; '.join(summary['failures'].values())}")
    flagged = sum(r["is_anomalous"] for r in summary["results"].values())
    resumed = f" ({summary['resumed']} from an earlier run)" if summary["resumed"] else ""
    print(f"{scored} image(s) scored{resumed}, {flagged} flagged anomalous, {failed} skipped; results in {out_dir}")
    for path, reason in summary["failures"].items():
        print(f"  skipped {path}: {reason}")
    warning = uncalibrated_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    if stop.requested:
        print(f"{summary['stopped']} image(s); rerun with --resume to finish", file=sys.stderr)
        return stop.exit_code
    return EXIT_PARTIAL if failed else 0


if __name__ == "__main__":
    sys.exit(main())
