"""Stage timing shared by the benchmarks: warm-up, device synchronisation, medians.

Detectors under comparison run in alternating blocks (A x k, B x k, A x k, ...) so that drift in
a shared or throttled machine hits all of them alike instead of biasing whichever ran last.
Blocks rather than single runs, with a pause and an untimed run at each switch, because thread
pools (torch's OpenMP, onnxruntime's) keep spinning briefly after a call and would steal cores
from the other runtime's first timed call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from zsad_edge.runtime.pipeline import DetectionPipeline

STAGES = ("preprocess", "encode", "heads", "postprocess", "end_to_end")


@dataclass
class StageTimes:
    """Per-stage samples in milliseconds for one detector."""

    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})

    def medians(self) -> dict[str, float]:
        return {stage: float(np.median(values)) for stage, values in self.samples.items()}

    def spreads(self) -> dict[str, list[float]]:
        """25th and 75th percentiles, to show how noisy a median is."""
        return {stage: [float(np.percentile(v, 25)), float(np.percentile(v, 75))] for stage, v in self.samples.items()}


def time_stages(detector: DetectionPipeline, images: Sequence[np.ndarray], into: StageTimes | None) -> None:
    """One timed pass through all stages; `into=None` is a warm-up pass."""
    marks = [time.perf_counter()]
    batch, sizes = detector.preprocess(images)
    marks.append(time.perf_counter())
    features = detector.encode(batch)
    detector.synchronize()
    marks.append(time.perf_counter())
    maps, scores = detector.post_heads(features, *detector.heads(features))  # the map stages count as heads
    detector.synchronize()
    marks.append(time.perf_counter())
    detector.postprocess(maps, scores, sizes)
    marks.append(time.perf_counter())
    if into is not None:
        for stage, start, end in zip(STAGES, marks, marks[1:]):
            into.samples[stage].append((end - start) * 1e3)
        into.samples["end_to_end"].append((marks[-1] - marks[0]) * 1e3)


def benchmark_interleaved(
    detectors: dict[str, DetectionPipeline],
    images: Sequence[np.ndarray],
    runs: int,
    warmup: int,
    block: int = 5,
    settle_s: float = 0.3,
) -> dict[str, StageTimes]:
    """`runs` timed samples per detector, taken in alternating blocks after `warmup` runs each."""
    times = {name: StageTimes() for name in detectors}
    for detector in detectors.values():
        for _ in range(warmup):
            time_stages(detector, images, None)
    while any(len(t.samples["end_to_end"]) < runs for t in times.values()):
        for name, detector in detectors.items():
            time.sleep(settle_s)
            time_stages(detector, images, None)
            for _ in range(min(block, runs - len(times[name].samples["end_to_end"]))):
                time_stages(detector, images, times[name])
    return times


def format_table(times: dict[str, StageTimes], baseline: str) -> str:
    """Markdown table of median ms per stage, with speed-up over the baseline detector."""
    names = list(times)
    medians = {name: t.medians() for name, t in times.items()}
    lines = [
        "| stage | "
        + " | ".join(f"{n} (ms)" for n in names)
        + " | "
        + " | ".join(f"{n} speed-up" for n in names if n != baseline)
        + " |",
        "|---" * (1 + len(names) + len(names) - 1) + "|",
    ]
    for stage in STAGES:
        cells = [f"{medians[n][stage]:.1f}" for n in names]
        ups = [f"{medians[baseline][stage] / max(medians[n][stage], 1e-9):.2f}x" for n in names if n != baseline]
        lines.append(f"| {stage} | " + " | ".join(cells) + " | " + " | ".join(ups) + " |")
    return "\n".join(lines)
