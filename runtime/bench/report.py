"""Bench results as text: one Markdown rendering serves the terminal and CI summaries alike."""

from __future__ import annotations

import numpy as np

from .compare import Comparison


def _cold_start_line(cold: dict | None) -> str:
    if not cold:
        return "cold start: not measured"
    return (
        f"cold start: load {cold['load_full_verify_s']:.2f} s with full verification, "
        f"{cold['load_stamped_s']:.2f} s with the stamp; first frame {cold['first_frame_ms']:.1f} ms; "
        f"peak memory {cold['peak_rss_mb']:.0f} MB"
    )


def record_table(record: dict) -> str:
    """Per configuration and stage: median, p95, p99, interquartile range; throughput; cold start."""
    lines = [
        "| config | stage | median ms | p95 | p99 | IQR | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, config in record["configs"].items():
        for stage, samples in config["samples_ms"].items():
            q25, q50, q75, q95, q99 = np.percentile(samples, [25, 50, 75, 95, 99])
            rate = f"{config['images_per_s']:.1f}" if stage == "end_to_end" else ""
            lines.append(f"| {key} | {stage} | {q50:.2f} | {q95:.2f} | {q99:.2f} | {q25:.2f}-{q75:.2f} | {rate} |")
    providers = "; ".join(f"{key}: {', '.join(c['providers'])}" for key, c in record["configs"].items())
    return "\n".join([*lines, "", f"providers: {providers}", _cold_start_line(record.get("cold_start"))])


def comparison_table(comparison: Comparison) -> str:
    """The verdicts, the output checks, the machine's own drift, and a closing RESULT line."""
    lines = []
    if comparison.environment_differences:
        lines += [
            "**environment changed** (compared anyway):",
            *[f"- {d}" for d in comparison.environment_differences],
            "",
        ]
    lines += [
        f"reference kernel: x{comparison.kernel_ratio:.3f} (the machine itself; >1 is slower), "
        f"machine noise {100 * comparison.machine_noise:.1f} %",
        "",
        "| config | stage | baseline ms | new ms | ratio | p | noise | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, metrics in comparison.metrics.items():
        for m in metrics:
            lines.append(
                f"| {key} | {m.metric} | {m.baseline_ms:.2f} | {m.new_ms:.2f} | {m.ratio:.3f} | {m.p_value:.2g} | "
                f"{100 * m.noise:.1f} % | {m.verdict} |"
            )
    lines += ["", "| outputs | images | max score error | max map error / range | verdict flips | verdict |"]
    lines += ["|---|---|---|---|---|---|"]
    for check in comparison.outputs:
        verdict = "CHANGED" if check.changed else "same"
        lines.append(
            f"| {check.key} | {check.images} | {check.max_score_error:.3g} | {check.max_map_error:.3g} | "
            f"{check.verdict_changes} | {verdict} |"
        )
    if comparison.unconfirmed:
        lines += ["", f"not confirmed by a second measurement (inconclusive): {', '.join(comparison.unconfirmed)}"]
    if comparison.unmatched:
        lines += ["", f"in one record only (not compared): {', '.join(comparison.unmatched)}"]
    cold = comparison.cold_start
    lines += ["", f"baseline {_cold_start_line(cold.get('baseline'))}", f"new {_cold_start_line(cold.get('new'))}"]
    inconclusive = sum(m.verdict == "inconclusive" for ms in comparison.metrics.values() for m in ms)
    note = f" ({inconclusive} inconclusive: noise above the threshold)" if inconclusive else ""
    if comparison.regressions:
        lines += ["", f"RESULT: REGRESSION in {', '.join(comparison.regressions)}{note}"]
    else:
        lines += ["", f"RESULT: no regression{note}"]
    return "\n".join(lines)
