"""`zsad-edge bench-compare BASE NEW`: the verdict of one stored bench record against another.

Exit 0: no regression (inconclusive metrics are listed, not failed); 1: a latency regression or
changed outputs; 2: an error (unreadable record, different environments without
--allow-env-change, nothing in common).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from ..bench.compare import Comparison, Thresholds, compare, confirmed, load_record
from ..bench.plots import plot_comparison
from ..bench.report import comparison_table
from ..errors import ZsadEdgeError
from ..image_io import write_bytes_atomic
from ..stopping import StopRequest

HELP = "compare two stored bench records: regression, improvement, unchanged or inconclusive per metric"


def comparison_arguments() -> argparse.ArgumentParser:
    """Parent parser shared with `bench --baseline`: thresholds and where the verdict goes."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("verdict")
    group.add_argument("--max-slowdown", type=float, default=1.10, help="ratio of medians that counts as slower")
    group.add_argument("--alpha", type=float, default=0.002, help="Mann-Whitney U significance level")
    group.add_argument("--max-score-error", type=float, default=1e-4, help="largest accepted image-score change")
    group.add_argument(
        "--max-map-error", type=float, default=1e-3, help="largest accepted map change, over the map's range"
    )
    group.add_argument(
        "--min-shift-ms",
        type=float,
        default=0.25,
        help="a median that moves by less than this is unchanged, whatever the ratio (sub-millisecond stages)",
    )
    group.add_argument("--allow-env-change", action="store_true", help="compare records from different environments")
    group.add_argument("--markdown", type=Path, help="also write the verdict as Markdown (CI job summaries)")
    group.add_argument("--json", type=Path, help="also write the verdict as JSON")
    group.add_argument("--plot", type=Path, help="a PNG per stage comparing the two distributions, in this folder")
    return parent


PARENTS = (comparison_arguments(),)
# Before a confirming measurement: a burst of other work that slowed the first one may pass.
CONFIRM_PAUSE_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", type=Path)
    parser.add_argument("new", type=Path)


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    if args.max_slowdown <= 1.0 or not 0.0 < args.alpha < 1.0:
        raise ZsadEdgeError("--max-slowdown must be > 1 and --alpha between 0 and 1")
    if args.min_shift_ms < 0:
        raise ZsadEdgeError("--min-shift-ms must be >= 0")
    return Thresholds(args.max_slowdown, args.alpha, args.max_score_error, args.max_map_error, args.min_shift_ms)


def judge_records(
    baseline: dict, new: dict, args: argparse.Namespace, measure_again: Callable[[list[str]], dict] | None = None
) -> int:
    """Compare, print and write the verdict; the exit code. With `measure_again` (a function that
    records the given configurations anew), a latency regression counts only once it repeats."""
    thresholds = thresholds_from(args)
    comparison: Comparison = compare(baseline, new, thresholds, args.allow_env_change)
    if measure_again and comparison.slow_configs:
        print(f"confirming {', '.join(comparison.slow_configs)}: measuring again", file=sys.stderr)
        time.sleep(CONFIRM_PAUSE_S)
        again = compare(baseline, measure_again(comparison.slow_configs), thresholds, args.allow_env_change)
        comparison = confirmed(comparison, again)
    table = comparison_table(comparison)
    print(table, file=sys.stdout)
    if args.markdown:
        write_bytes_atomic(args.markdown, (table + "\n").encode())
    if args.json:
        write_bytes_atomic(args.json, (json.dumps(comparison.as_dict(), indent=2) + "\n").encode())
    if args.plot:
        for path in plot_comparison(baseline, new, args.plot):
            print(f"plot: {path}")
    return comparison.exit_code


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    return judge_records(load_record(args.baseline), load_record(args.new), args)
