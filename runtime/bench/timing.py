"""Stage timing for `zsad-edge bench` and the benchmarks: warm-up, device synchronisation, interleaving.

Cases under comparison run in alternating blocks (A x k, B x k, A x k, ...) so that drift in a
shared or throttled machine hits all of them alike instead of biasing whichever ran last. Blocks
rather than single runs, with a pause and an untimed run at each switch, because thread pools
(torch's OpenMP, onnxruntime's) keep spinning briefly after a call and would steal cores from the
other case's first timed call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..pipeline import DetectionPipeline

STAGES = ("preprocess", "encode", "heads", "postprocess", "refine", "end_to_end")


@dataclass
class StageTimes:
    """Per-stage samples in milliseconds for one case (`refine` only where result stages run)."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def medians(self) -> dict[str, float]:
        return {stage: float(np.median(values)) for stage, values in self.samples.items()}

    def spreads(self) -> dict[str, list[float]]:
        """25th and 75th percentiles, to show how noisy a median is."""
        return {stage: [float(np.percentile(v, 25)), float(np.percentile(v, 75))] for stage, v in self.samples.items()}

    @property
    def count(self) -> int:
        return len(self.samples.get("end_to_end", []))


def time_stages(detector: DetectionPipeline, images: Sequence[np.ndarray], into: StageTimes | None) -> None:
    """One timed pass through all stages; `into=None` is a warm-up pass."""
    marks = {"start": time.perf_counter()}
    loaded = detector.load(images)
    batch, sizes = detector.preprocess_loaded(loaded)
    marks["preprocess"] = time.perf_counter()
    features = detector.encode(batch)
    detector.synchronize()
    marks["encode"] = time.perf_counter()
    maps, scores = detector.post_heads(features, *detector.heads(features))  # the map stages count as heads
    detector.synchronize()
    marks["heads"] = time.perf_counter()
    results = detector.postprocess(maps, scores, sizes)
    marks["postprocess"] = time.perf_counter()
    if detector.result_stages:
        detector.refine(results, loaded)
        marks["refine"] = time.perf_counter()
    if into is None:
        return
    names = list(marks)
    for previous, stage in zip(names, names[1:]):
        into.samples.setdefault(stage, []).append((marks[stage] - marks[previous]) * 1e3)
    into.samples.setdefault("end_to_end", []).append((marks[names[-1]] - marks["start"]) * 1e3)


@runtime_checkable
class TimesItself(Protocol):
    """A case timed where it runs (a detector in another process): one pass, its samples added to
    `into`, or a warm-up pass where `into` is None."""

    def time_stages(self, images: Sequence[np.ndarray], into: StageTimes | None) -> None: ...


def timed_pass(
    detector: DetectionPipeline | TimesItself, images: Sequence[np.ndarray], into: StageTimes | None
) -> None:
    """One pass of `time_stages`, by the case itself where it times itself."""
    if isinstance(detector, TimesItself):
        detector.time_stages(images, into)
    else:
        time_stages(detector, images, into)


def benchmark_interleaved(
    cases: Mapping[str, tuple[DetectionPipeline | TimesItself, Sequence[np.ndarray]]],
    runs: int,
    warmup: int,
    block: int = 5,
    settle_s: float = 0.3,
    between_rounds: Callable[[], None] | None = None,
) -> dict[str, StageTimes]:
    """`runs` timed samples per case (a detector and its batch), taken in alternating blocks after
    `warmup` runs each; `between_rounds` runs after each round of blocks (a noise probe)."""
    times = {name: StageTimes() for name in cases}
    for detector, images in cases.values():
        for _ in range(warmup):
            timed_pass(detector, images, None)
    while any(t.count < runs for t in times.values()):
        for name, (detector, images) in cases.items():
            time.sleep(settle_s)
            timed_pass(detector, images, None)
            for _ in range(min(block, runs - times[name].count)):
                timed_pass(detector, images, times[name])
        if between_rounds is not None:
            between_rounds()
    return times


def format_table(times: dict[str, StageTimes], baseline: str) -> str:
    """Markdown table of median ms per stage, with speed-up over the baseline case."""
    names = list(times)
    medians = {name: t.medians() for name, t in times.items()}
    stages = [stage for stage in STAGES if all(stage in medians[name] for name in names)]
    others = [name for name in names if name != baseline]
    header = [f"{n} (ms)" for n in names] + [f"{n} speed-up" for n in others]
    lines = ["| stage | " + " | ".join(header) + " |", "|---" * (1 + len(header)) + "|"]
    for stage in stages:
        cells = [f"{medians[n][stage]:.1f}" for n in names]
        ups = [f"{medians[baseline][stage] / max(medians[n][stage], 1e-9):.2f}x" for n in others]
        lines.append(f"| {stage} | " + " | ".join(cells) + " | " + " | ".join(ups) + " |")
    return "\n".join(lines)
