"""Comparing two bench records: latency verdicts per configuration and stage, output changes,
and refusal when the two were recorded in different environments.

A latency pass with changed outputs is not a pass: a runtime or driver upgrade that silently
changes scores or maps is reported as an output regression with the numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ZsadEdgeError
from .fingerprint import differences
from .record import SCHEMA, SCHEMA_VERSION
from .statistics import MetricVerdict, judge, relative_iqr

EXIT_PASS, EXIT_REGRESSION = 0, 1


@dataclass(frozen=True)
class Thresholds:
    max_slowdown: float = 1.10
    alpha: float = 0.002
    max_score_error: float = 1e-4  # absolute, on image scores
    max_map_error: float = 1e-3  # max abs difference of the downsampled maps over the baseline's range
    min_shift_ms: float = 0.25  # smaller shifts of a median are never a change


@dataclass(frozen=True)
class OutputCheck:
    key: str
    images: int
    max_score_error: float
    max_map_error: float
    verdict_changes: int
    changed: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Comparison:
    environment_differences: list[str]
    metrics: dict[str, list[MetricVerdict]] = field(default_factory=dict)  # config key -> per stage
    outputs: list[OutputCheck] = field(default_factory=list)
    kernel_ratio: float = 1.0  # new / baseline median of the reference kernel: the machine itself
    machine_noise: float = 0.0
    unmatched: list[str] = field(default_factory=list)  # configurations in only one of the records
    cold_start: dict = field(default_factory=dict)
    unconfirmed: list[str] = field(default_factory=list)  # regressions a second measurement did not repeat

    @property
    def slow_configs(self) -> list[str]:
        """Configurations with a latency regression (to measure again before failing)."""
        return [key for key, ms in self.metrics.items() if any(m.verdict == "regression" for m in ms)]

    @property
    def regressions(self) -> list[str]:
        slow = [f"{key} {m.metric}" for key, ms in self.metrics.items() for m in ms if m.verdict == "regression"]
        return slow + [f"{check.key} outputs" for check in self.outputs if check.changed]

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSION if self.regressions else EXIT_PASS

    def as_dict(self) -> dict:
        return {
            "environment_differences": self.environment_differences,
            "metrics": {key: [m.as_dict() for m in ms] for key, ms in self.metrics.items()},
            "outputs": [check.as_dict() for check in self.outputs],
            "kernel_ratio": self.kernel_ratio,
            "machine_noise": self.machine_noise,
            "unmatched": self.unmatched,
            "cold_start": self.cold_start,
            "unconfirmed": self.unconfirmed,
            "regressions": self.regressions,
            "exit_code": self.exit_code,
        }


def load_record(path: Path) -> dict:
    """A bench record from disk, or one clear error naming what is wrong with the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ZsadEdgeError(f"cannot read bench record {path}: {exc.strerror}") from None
    if not text.strip():
        raise ZsadEdgeError(f"bench record {path} is empty")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ZsadEdgeError(f"bench record {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ZsadEdgeError(f"{path} is not a zsad-edge bench record (no schema {SCHEMA!r}); record one with `bench`")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ZsadEdgeError(
            f"{path} has bench schema version {version!r}; this zsad-edge reads up to {SCHEMA_VERSION}: upgrade it"
        )
    for key in ("environment", "configs", "noise", "outputs"):
        if not isinstance(data.get(key), dict):
            raise ZsadEdgeError(f"bench record {path} is incomplete: no {key!r} section")
    return data


def _comparable_kernels(baseline: dict, new: dict) -> tuple[list[float], list[float]]:
    """Both runs' reference-kernel samples, or none when the kernels ran on different thread counts
    (records without a count ran it on one thread): their ratio would not be the machine's."""
    if baseline.get("reference_kernel_threads", 1) != new.get("reference_kernel_threads", 1):
        return [], []
    return baseline["reference_kernel_ms"], new["reference_kernel_ms"]


def _image_set(record: dict) -> tuple:
    """What a record timed: its image source, count and digest (records without a digest: source and count)."""
    settings = record.get("settings", {})
    return settings.get("images", "?"), settings.get("image_count", "?"), settings.get("images_sha256")


def _output_check(key: str, baseline: list[dict], new: list[dict]) -> OutputCheck:
    if len(baseline) != len(new):
        return OutputCheck(key, len(new), float("inf"), float("inf"), 0, True)
    scores = [abs(b["score"] - n["score"]) for b, n in zip(baseline, new)]
    flips = sum(b["is_anomalous"] != n["is_anomalous"] for b, n in zip(baseline, new))
    map_errors = []
    for b, n in zip(baseline, new):
        base_map, new_map = np.asarray(b["map_thumb"]), np.asarray(n["map_thumb"])
        spread = max(float(np.ptp(base_map)), 1e-12)
        map_errors.append(float(np.abs(base_map - new_map).max()) / spread)
    return OutputCheck(key, len(new), max(scores, default=0.0), max(map_errors, default=0.0), flips, False)


def compare(
    baseline: dict, new: dict, thresholds: Thresholds = Thresholds(), allow_env_change: bool = False
) -> Comparison:
    """Verdicts of `new` against `baseline`; refuses records from different environments unless allowed."""
    changed = differences(baseline["environment"], new["environment"])
    if changed and not allow_env_change:
        raise ZsadEdgeError(
            "the baseline was recorded in another environment (" + "; ".join(changed) + "): "
            "record a new baseline there, or pass --allow-env-change to compare anyway"
        )
    base_images, new_images = _image_set(baseline), _image_set(new)
    digests = {base_images[2], new_images[2]} - {None}
    if base_images[:2] != new_images[:2] or len(digests) > 1:
        raise ZsadEdgeError(
            f"the two runs timed different images (baseline: {base_images[0]}, {base_images[1]} image(s); this run: "
            f"{new_images[0]}, {new_images[1]} image(s)), so neither latency nor outputs compare: "
            "pass the baseline's --images"
        )
    common = [key for key in new["configs"] if key in baseline["configs"]]
    if not common:
        raise ZsadEdgeError(
            f"no configuration in common: baseline has {sorted(baseline['configs'])}, this run {sorted(new['configs'])}"
        )
    base_kernel, new_kernel = _comparable_kernels(baseline["noise"], new["noise"])
    machine_noise = max(relative_iqr(base_kernel), relative_iqr(new_kernel)) if base_kernel and new_kernel else 0.0
    comparison = Comparison(
        environment_differences=changed,
        kernel_ratio=float(np.median(new_kernel) / np.median(base_kernel)) if base_kernel and new_kernel else 1.0,
        machine_noise=machine_noise,
        unmatched=sorted(set(baseline["configs"]) ^ set(new["configs"])),
        cold_start={"baseline": baseline.get("cold_start"), "new": new.get("cold_start")},
    )
    for key in common:
        base_samples, new_samples = baseline["configs"][key]["samples_ms"], new["configs"][key]["samples_ms"]
        comparison.metrics[key] = [
            judge(
                stage,
                base_samples[stage],
                new_samples[stage],
                thresholds.max_slowdown,
                thresholds.alpha,
                machine_noise,
                comparison.kernel_ratio,
                thresholds.min_shift_ms,
            )
            for stage in new_samples
            if stage in base_samples
        ]
    for key in new["outputs"]:
        if key in baseline["outputs"]:
            check = _output_check(key, baseline["outputs"][key], new["outputs"][key])
            changed_outputs = (
                check.changed
                or check.verdict_changes > 0
                or check.max_score_error > thresholds.max_score_error
                or check.max_map_error > thresholds.max_map_error
            )
            comparison.outputs.append(OutputCheck(**{**check.as_dict(), "changed": changed_outputs}))
    return comparison


def confirmed(first: Comparison, again: Comparison) -> Comparison:
    """`first` with each latency regression kept only where the second measurement (of the same
    configurations against the same baseline) also calls it one; the others become inconclusive
    and are listed as unconfirmed. One noisy measurement cannot fail a build."""
    repeated = {(key, m.metric) for key, ms in again.metrics.items() for m in ms if m.verdict == "regression"}
    metrics, unconfirmed = {}, []
    for key, ms in first.metrics.items():
        metrics[key] = []
        for m in ms:
            if m.verdict == "regression" and (key, m.metric) not in repeated:
                unconfirmed.append(f"{key} {m.metric}")
                m = replace(m, verdict="inconclusive")
            metrics[key].append(m)
    return replace(first, metrics=metrics, unconfirmed=unconfirmed)
