"""The verdict on one metric: regression, improvement, unchanged, or inconclusive.

As asv does, a change needs both a ratio of medians beyond `max_slowdown` (default 1.10) and a
Mann-Whitney U test on the raw samples at p < `alpha` (default 0.002). Unlike a bare ratio test,
the machine's noise is part of the verdict: noise is the larger of the two runs' relative
interquartile ranges (and the reference kernel's, timed between rounds in each run). A shift no
larger than the noise is not called a change, and when the noise is larger than the threshold
itself an apparent non-change is "inconclusive", never a pass by luck.

The reference kernel's ratio between the runs (`machine_ratio`, > 1: the machine itself ran
slower) is taken out of a slowdown before it is called a regression, and out of a speed-up before
it is called an improvement: a busier or slower machine reads as such, not as a slower product.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import ZsadEdgeError

BENCH_EXTRA = "pip install 'zsad-edge[bench]'"


def relative_iqr(samples: Sequence[float]) -> float:
    """Interquartile range over the median: the spread of a run, scale-free."""
    q25, median, q75 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return float((q75 - q25) / median) if median > 0 else float("inf")


def mann_whitney_p(baseline: Sequence[float], new: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value (scipy)."""
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        raise ZsadEdgeError(f"comparing runs needs scipy: {BENCH_EXTRA}") from None
    return float(mannwhitneyu(baseline, new, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class MetricVerdict:
    metric: str
    baseline_ms: float
    new_ms: float
    ratio: float  # new / baseline medians: > 1 is slower
    p_value: float
    noise: float
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def judge(
    metric: str,
    baseline: Sequence[float],
    new: Sequence[float],
    max_slowdown: float = 1.10,
    alpha: float = 0.002,
    machine_noise: float = 0.0,
    machine_ratio: float = 1.0,
    min_shift_ms: float = 0.0,
) -> MetricVerdict:
    """The verdict on one metric's samples; machine_noise: the reference kernel's relative spread,
    machine_ratio: its new / baseline median; min_shift_ms: a change of the medians smaller than
    this is no change at all (a sub-millisecond stage moves by more than 10 % between processes
    with cache and timer effects alone)."""
    if len(baseline) < 3 or len(new) < 3:
        raise ZsadEdgeError(f"{metric}: too few samples to compare ({len(baseline)} and {len(new)}; need 3 each)")
    base_median, new_median = float(np.median(baseline)), float(np.median(new))
    ratio = new_median / base_median if base_median > 0 else float("inf")
    p_value = mann_whitney_p(baseline, new)
    noise = max(relative_iqr(baseline), relative_iqr(new), machine_noise)
    significant = p_value < alpha and abs(new_median - base_median) >= min_shift_ms
    slower, faster = ratio / max(machine_ratio, 1.0), ratio / min(machine_ratio, 1.0)
    if ratio > max_slowdown and significant:
        verdict = "regression" if slower > max_slowdown and slower - 1.0 > noise else "inconclusive"
    elif ratio < 1.0 / max_slowdown and significant:
        verdict = "improvement" if faster < 1.0 / max_slowdown and 1.0 / faster - 1.0 > noise else "inconclusive"
    elif noise > max_slowdown - 1.0:
        verdict = "inconclusive"  # a change of the threshold's size would hide in this noise
    else:
        verdict = "unchanged"
    return MetricVerdict(metric, base_median, new_median, ratio, p_value, noise, verdict)
