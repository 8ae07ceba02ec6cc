"""Archives on Ray: what `detect --ray` costs next to the local `detect`, on this machine.

In one run, interleaved over --rounds rounds (medians and spread reported), on a folder of
--images PNG files (480x640):
- local: `zsad-edge detect BUNDLE FOLDER --out ...` (one process, --batch-size 1);
- ray: the same with `--ray --ray-cpus C` (a private Ray instance started by the command, C actors
  of one CPU each, one detector per actor), whose wall time includes starting and stopping Ray.
Both are timed end to end as a user runs them (process start to exit), and the results are
checked to be equal. On a 2-core machine both use the same two cores: this measures Ray's fixed
cost and its per-image overhead, not the gain of a cluster.

  python benchmarks/ray_archive.py                                  # ViT-B-16 @ 224, APRIL-GAN
  python benchmarks/ray_archive.py --images 64 --rounds 3 --out benchmarks/results/ray_archive_ViT-B-16_224.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from zsad_edge.benchmarks.reports import machine_info, random_bundle, write_report

CLI = [sys.executable, "-m", "zsad_edge.runtime.cli", "detect"]


def _archive(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"part{index:04d}.png"), (rng.random((480, 640, 3)) * 255).astype(np.uint8))
    return folder


def _timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - began


def _scores(out: Path) -> dict[str, float]:
    results = json.loads((out / "summary.json").read_text())["results"]
    return {name: result["score"] for name, result in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--method", default="aprilgan")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        bundle = str(random_bundle(args.arch, args.image_size, args.method, folder).path)
        images = str(_archive(folder / "archive", args.images))
        configs = {
            "local": [*CLI, bundle, images, "--backend", "cpu"],
            "ray": [*CLI, bundle, images, "--backend", "cpu", "--ray", "--ray-cpus", str(args.ray_cpus)],
        }
        seconds: dict[str, list[float]] = {name: [] for name in configs}
        scores = {}
        for round_index in range(args.rounds):
            for name, command in configs.items():  # interleaved: drift hits both alike
                out = folder / f"{name}{round_index}"
                seconds[name].append(_timed([*command, "--out", str(out)]))
                scores[name] = _scores(out)
        assert scores["local"] == scores["ray"], "ray and local scores differ"
    rows = {}
    for name, values in seconds.items():
        median = float(np.median(values))
        rows[name] = {
            "seconds_median": round(median, 2),
            "seconds_min": round(min(values), 2),
            "seconds_max": round(max(values), 2),
            "images_per_s": round(args.images / median, 3),
        }
    overhead = rows["ray"]["seconds_median"] - rows["local"]["seconds_median"]
    print(f"{'configuration':<10} {'s (median)':>10} {'min':>7} {'max':>7} {'images/s':>9}")
    for name, row in rows.items():
        print(f"{name:<10} {row['seconds_median']:>10} {row['seconds_min']:>7} {row['seconds_max']:>7} "
              f"{row['images_per_s']:>9}")  # fmt: skip
    print(f"ray - local: {overhead:+.2f} s for {args.images} images (scores equal)")
    report = {
        "benchmark": "ray_archive",
        "bundle": {"arch": args.arch, "image_size": args.image_size, "method": args.method},
        "images": args.images,
        "image_size": [480, 640],
        "rounds": args.rounds,
        "ray_cpus": args.ray_cpus,
        "results": rows,
        "ray_minus_local_s": round(overhead, 2),
        "scores_equal": True,
        "machine": machine_info(),
    }
    write_report(report, args.out, f"ray_archive_{args.arch}_{args.image_size}")


if __name__ == "__main__":
    main()
