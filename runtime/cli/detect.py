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

from ..archive.ray_data import RayOptions, ray_outcomes
from ..archive.rows import Row, local_outcomes, rows_of
from ..bundle import BASE_PRECISION
from ..detector import Detector, DetectorSpec
from ..errors import ImageReadError, ZsadEdgeError
from ..image_io import encode_image, list_images, write_bytes_atomic
from ..overlay import render_overlay
from ..pipeline import DetectionResult
from ..run_record import run_record
from ..stopping import NEVER, StopRequest
from .common import EXIT_PARTIAL, backend_arguments, ray_arguments, ray_options, trust_arguments

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


def job_outputs(
    job: Job, image: np.ndarray, result: DetectionResult, elapsed_ms: float, scoring: dict, record: dict
) -> list[tuple[str, bytes]]:
    """A job's files as (name suffix, bytes), in the order they are written, the JSON last. Made
    where the result is (a Ray actor with --ray), written by the run."""
    overlay = render_overlay(image, result, scoring, record["thresholds"], stamp=job.image.name)
    outputs = [("_overlay.png", encode_image(overlay))]
    if result.refinement is not None:
        outputs.append(("_sam_mask.png", encode_image(result.refinement.mask.astype(np.uint8) * 255)))
    summary = {"image": str(job.image), **result.summary(), "elapsed_ms": elapsed_ms, "run": record}
    outputs.append((".json", (json.dumps(summary, indent=2) + "\n").encode()))
    return outputs


@dataclass
class DetectRun:
    """The state of one detect run; `summary()` is what summary.json holds."""

    out_dir: Path
    record: dict
    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    resumed: int = 0
    started: float = field(default_factory=time.perf_counter)

    def store(self, job: Job, outputs: list[tuple[str, bytes]]) -> None:
        """Write a job's files in order: overlay (and SAM mask) first, the JSON last, so a JSON on
        disk means the image is done."""
        base = self.out_dir / job.stem
        for suffix, data in outputs:
            write_bytes_atomic(base.with_name(base.name + suffix), data)
        self.results[str(job.image)] = json.loads(outputs[-1][1])

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


def detect_work(detector: Detector, images: list[np.ndarray], rows: list[Row], record: dict) -> list:
    """Score one batch and make each job's files (the archive `work`: runs where the detector is)."""
    start = time.perf_counter()
    results = detector.detect_batch(images)
    elapsed_ms = round((time.perf_counter() - start) * 1000 / len(images), 2)
    jobs = [Job(Path(row["path"]), Path(row["tag"])) for row in rows]
    return [
        job_outputs(job, image, result, elapsed_ms, detector.scoring, record)
        for job, image, result in zip(jobs, images, results)
    ]


def detect_jobs(
    detector: Detector,
    jobs: Sequence[Job],
    out_dir: Path,
    record: dict,
    batch_size: int = 1,
    resume: bool = False,
    stop: StopRequest = NEVER,
    progress: bool = True,
    ray: tuple[DetectorSpec, RayOptions] | None = None,
) -> dict:
    """Detect on every job (in batches; with `ray`, on an actor pool each opening the spec's
    detector); returns the summary, also written to out_dir/summary.json."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    run = DetectRun(out_dir, record)
    todo = [job for job in jobs if not (resume and run.resume(job))]
    rows = rows_of([job.image for job in todo], [str(job.stem) for job in todo])
    if ray is None:
        outcomes = local_outcomes(detector, rows, detect_work, record, batch_size, stop)
    else:
        outcomes = ray_outcomes(rows, ray[0], detect_work, record, ray[1], stop)
    bar = tqdm(total=len(jobs), initial=run.resumed, desc="detect", unit="img", file=sys.stderr,
               disable=not progress or len(jobs) < 2)  # fmt: skip
    with bar:
        for row, scored, value in outcomes:
            job = todo[row["index"]]
            if scored:
                run.store(job, value)
            else:
                run.failures[str(job.image)] = value
            bar.update()
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


PARENTS = (backend_arguments(with_verify=True), trust_arguments(), ray_arguments())


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
    ray: RayOptions | None = None,
) -> dict:
    """Detect on every image (with `ray`, on a Ray actor pool); returns the summary written to
    out_dir/summary.json. The bundle is opened here in either case: verified before any work,
    and the run record made from it."""
    spec = DetectorSpec(bundle, backend, precision, memory_bank, device, verify)
    detector = spec.open()
    weights = detector.manifest.clip.get("weights", {})
    if weights.get("kind") == "random":
        print(f"warning: {bundle} was built with {weights.get('warning', 'random weights')}", file=sys.stderr)
    jobs = plan_jobs(inputs, out_dir)
    if not jobs:
        raise ImageReadError(f"no images found in {', '.join(map(str, inputs))}")
    record = run_record(detector, bundle, precision, memory_bank)
    if ray is not None:
        record["ray"] = {
            "address": ray.address,
            "cpus_per_actor": ray.cpus_per_actor,
            "gpus_per_actor": ray.gpus_per_actor,
        }
    return detect_jobs(detector, jobs, out_dir, record, batch_size, resume, stop, ray=(spec, ray) if ray else None)


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
        ray_options(args),
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
