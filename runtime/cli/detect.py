"""`zsad-edge detect`: score images and folders; traceable outputs, resumable, stoppable.

Outputs mirror the inputs: `--out OUT` with a folder input `parts/` writes `OUT/test/good/000.json`
for `parts/test/good/000.png` (a file input writes `OUT/<name>.json`), and nothing inside OUT is
ever read as input. Per image: the overlay (and SAM mask) first, the JSON last, so a JSON on disk
means a complete result; `--resume` skips those. Every JSON and the summary record how the result
was made: bundle, precision, providers, thresholds and their source, memory bank, timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..bundle import BASE_PRECISION
from ..detector import Detector
from ..errors import ImageReadError, ZsadEdgeError
from ..image_io import check_image, list_images, write_bytes_atomic, write_image_atomic
from ..overlay import render_overlay
from ..pipeline import DetectionResult
from ..run_record import run_record
from ..stopping import NEVER, StopRequest
from .common import EXIT_PARTIAL, backend_arguments, open_detector, trust_arguments

HELP = "score images and write JSON + heatmap overlays"

# Share of flagged images above which an uncalibrated bundle gets a warning.
UNCALIBRATED_FLAG_WARNING = 0.5


@dataclass(frozen=True)
class Job:
    """One input image and where its outputs go (relative to --out, without suffix)."""

    image: Path
    stem: Path


def plan_jobs(inputs: Sequence[str | Path], out_dir: Path) -> list[Job]:
    """Input images in order, each with an output stem mirroring its path below its input folder."""
    out = Path(out_dir).resolve()
    jobs, used = [], set()
    for item in map(Path, inputs):
        if item.is_dir():
            pairs = [
                (p, p.relative_to(item).with_suffix(""))
                for p in list_images([item])
                if not p.resolve().is_relative_to(out)
            ]
        else:
            pairs = [(item, Path(item.stem))]
        for image, stem in pairs:
            unique, counter = stem, 1
            while unique in used:  # e.g. part.png and part.jpg side by side
                counter += 1
                unique = stem.with_name(f"{stem.name}_{counter}")
            used.add(unique)
            jobs.append(Job(image, unique))
    return jobs


@dataclass
class DetectRun:
    """The state of one detect run; `summary()` is what summary.json holds."""

    detector: Detector
    out_dir: Path
    record: dict
    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    resumed: int = 0
    started: float = field(default_factory=time.perf_counter)

    def write(self, job: Job, image: np.ndarray, result: DetectionResult, elapsed_ms: float) -> None:
        """Overlay (and SAM mask) first, JSON last: a JSON on disk means the image is done."""
        base = self.out_dir / job.stem
        sam_mask = result.refinement.mask if result.refinement is not None else None
        overlay = render_overlay(image, result, self.detector.scoring, self.record["thresholds"], stamp=job.image.name)
        write_image_atomic(base.with_name(f"{base.name}_overlay.png"), overlay)
        if sam_mask is not None:
            write_image_atomic(base.with_name(f"{base.name}_sam_mask.png"), sam_mask.astype(np.uint8) * 255)
        summary = {"image": str(job.image), **result.summary(), "elapsed_ms": elapsed_ms, "run": self.record}
        write_bytes_atomic(base.with_name(f"{base.name}.json"), (json.dumps(summary, indent=2) + "\n").encode())
        self.results[str(job.image)] = summary

    def resume(self, job: Job) -> bool:
        """Take a complete earlier result of this job made the same way (bundle, precision, bank), if any."""
        path = (self.out_dir / job.stem).with_name(f"{job.stem.name}.json")
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(earlier, dict) or earlier.get("image") != str(job.image) or "score" not in earlier:
            return False
        made_by = earlier.get("run", {})
        if any(made_by.get(key) != self.record[key] for key in ("bundle", "precision", "memory_bank")):
            return False
        self.results[str(job.image)] = earlier
        self.resumed += 1
        return True

    def summary(self, total: int, stop: StopRequest) -> dict:
        done = len(self.results) + len(self.failures)
        return {
            "run": self.record,
            "images": total,
            "scored": len(self.results),
            "resumed": self.resumed,
            "skipped": len(self.failures),
            "stopped": f"stopped by {stop.signal_name} after {done} of {total}" if stop.requested else None,
            "elapsed_s": round(time.perf_counter() - self.started, 3),
            "results": self.results,
            "failures": self.failures,
        }


def detect_jobs(
    detector: Detector,
    jobs: Sequence[Job],
    out_dir: Path,
    record: dict,
    batch_size: int = 1,
    resume: bool = False,
    stop: StopRequest = NEVER,
    progress: bool = True,
) -> dict:
    """Detect on every job (in batches); returns the summary, also written to out_dir/summary.json."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    run = DetectRun(detector, out_dir, record)
    pending: list[tuple[Job, np.ndarray]] = []

    def flush() -> None:
        start = time.perf_counter()
        results = detector.detect_batch([image for _, image in pending])
        elapsed_ms = (time.perf_counter() - start) * 1000 / len(pending)
        for (job, image), result in zip(pending, results):
            run.write(job, image, result, round(elapsed_ms, 2))
        pending.clear()

    for job in stop.each(tqdm(jobs, desc="detect", unit="img", disable=not progress or len(jobs) < 2, file=sys.stderr)):
        if resume and run.resume(job):
            continue
        try:
            pending.append((job, check_image(detector.read(job.image))))
        except ImageReadError as exc:
            run.failures[str(job.image)] = str(exc)
            continue
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    summary = run.summary(len(jobs), stop)
    write_bytes_atomic(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def uncalibrated_warning(summary: dict) -> str | None:
    """One warning when an uncalibrated bundle flags most images: its thresholds are placeholders."""
    scored = summary["results"].values()
    flagged = sum(r["is_anomalous"] for r in scored)
    if summary["run"]["thresholds"]["calibrated"] or not scored or flagged <= UNCALIBRATED_FLAG_WARNING * len(scored):
        return None
    return (
        f"warning: {flagged} of {len(scored)} images flagged by an uncalibrated bundle: its thresholds are "
        "placeholders; run `zsad-edge calibrate BUNDLE NORMAL_IMAGES` first"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle folder written by export/build_engines.py")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder; mirrors the input folders' layout (<name>.json, <name>_overlay.png)",
    )
    parser.add_argument("--resume", action="store_true", help="skip images whose results are already in --out")
    parser.add_argument("--batch-size", type=int, default=1, help="images per model call")
    parser.add_argument("--memory-bank", type=Path, help="few-shot: a bank written by `zsad-edge fit-normal`")


PARENTS = (backend_arguments(with_verify=True), trust_arguments())


def run_detect(
    bundle: Path,
    inputs: Sequence[str],
    out_dir: Path,
    backend: str = "auto",
    batch_size: int = 1,
    verify: bool = True,
    memory_bank: Path | None = None,
    precision: str = BASE_PRECISION,
    resume: bool = False,
    stop: StopRequest = NEVER,
    device: str = "CPU",
) -> dict:
    """Detect on every image; returns the summary written to out_dir/summary.json."""
    detector = open_detector(bundle, backend, memory_bank, verify, precision, device)
    weights = detector.manifest.clip.get("weights", {})
    if weights.get("kind") == "random":
        print(f"warning: {bundle} was built with {weights.get('warning', 'random weights')}", file=sys.stderr)
    jobs = plan_jobs(inputs, out_dir)
    if not jobs:
        raise ImageReadError(f"no images found in {', '.join(map(str, inputs))}")
    return detect_jobs(
        detector, jobs, out_dir, run_record(detector, bundle, precision, memory_bank), batch_size, resume, stop
    )


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    """One line (plus the skipped files) and the exit code of a detect run."""
    if args.batch_size < 1:
        raise ZsadEdgeError("--batch-size must be at least 1")
    summary = run_detect(
        args.bundle,
        args.inputs,
        args.out,
        args.backend,
        args.batch_size,
        not args.no_verify,
        args.memory_bank,
        args.precision,
        args.resume,
        stop,
        args.device,
    )
    scored, failed = summary["scored"], summary["skipped"]
    if not scored and failed and not stop.requested:
        raise ImageReadError(f"no image could be read: {'; '.join(summary['failures'].values())}")
    flagged = sum(r["is_anomalous"] for r in summary["results"].values())
    resumed = f" ({summary['resumed']} from an earlier run)" if summary["resumed"] else ""
    print(f"{scored} image(s) scored{resumed}, {flagged} flagged anomalous, {failed} skipped; results in {args.out}")
    for path, reason in summary["failures"].items():
        print(f"  skipped {path}: {reason}")
    warning = uncalibrated_warning(summary)
    if warning:
        print(warning, file=sys.stderr)
    if stop.requested:
        print(f"{summary['stopped']} image(s); rerun with --resume to finish", file=sys.stderr)
        return stop.exit_code
    return EXIT_PARTIAL if failed else 0
