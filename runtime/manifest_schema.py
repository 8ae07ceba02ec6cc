"""What a valid manifest looks like, field by field, as data.

Manifests are JSON and people edit them by hand (thresholds, mostly). Every field the runtime
reads is checked when the bundle loads, so a typo becomes one line naming the field and the form
it needs, instead of a ValueError, KeyError or numpy broadcast error several calls later.
"""

from __future__ import annotations

import re
from numbers import Real
from typing import Any, Callable

from .errors import BundleError
from .preprocess import INTERPOLATIONS, RESIZE_RULES
from .scoring import SCORE_RULES

Check = Callable[[Any], bool]
MISSING = object()


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value == value  # NaN != NaN


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(count: int, positive: bool = False) -> Check:
    return lambda v: (
        isinstance(v, list)
        and len(v) == count
        and all(_number(x) for x in v)
        and (not positive or all(x > 0 for x in v))
    )


def _positive_ints(count: int) -> Check:
    return lambda v: isinstance(v, list) and len(v) == count and all(_int(x) and x > 0 for x in v)


def _range(value: Any) -> bool:
    return _numbers(2)(value) and value[0] <= value[1]


def _one_of(choices) -> Check:
    return lambda v: v in choices


def _tensor_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("shape"), list)
        and isinstance(t.get("dtype"), str)
        for t in value
    )


def _components(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("file"), str)
            and _tensor_list(c.get("inputs"))
            and _tensor_list(c.get("outputs"))
            for c in value.values()
        )
    )


_SHA256 = re.compile(r"[0-9a-f]{64}")

# (dotted path, required, the form it must have, check)
FIELDS: tuple[tuple[str, bool, str, Check], ...] = (
    ("method", True, "an object with name and params", lambda v: isinstance(v, dict)),
    ("method.name", True, "a string", lambda v: isinstance(v, str)),
    ("method.params", False, "an object", lambda v: isinstance(v, dict)),
    ("method.params.gaussian_sigma", False, "a number >= 0", lambda v: _number(v) and v >= 0),
    ("method.params.fusion_weight", False, "a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1),
    ("clip", True, "an object", lambda v: isinstance(v, dict)),
    ("clip.layers", False, "a positive integer", lambda v: _int(v) and v > 0),
    ("preprocess", True, "an object", lambda v: isinstance(v, dict)),
    ("preprocess.input_size", True, "[height, width], two positive integers", _positive_ints(2)),
    ("preprocess.mean", True, "three numbers (R, G, B)", _numbers(3)),
    ("preprocess.std", True, "three positive numbers (R, G, B)", _numbers(3, positive=True)),
    ("preprocess.resize", False, f"one of {', '.join(RESIZE_RULES)}", _one_of(RESIZE_RULES)),
    ("preprocess.interpolation", False, f"one of {', '.join(INTERPOLATIONS)}", _one_of(INTERPOLATIONS)),
    (
        "taps",
        True,
        "a non-empty list of distinct positive block numbers",
        lambda v: isinstance(v, list) and bool(v) and all(_int(t) and t > 0 for t in v) and len(set(v)) == len(v),
    ),
    ("patch_grid", True, "[rows, columns], two positive integers", _positive_ints(2)),
    ("components", True, "an object of graphs, each with file, inputs and outputs", _components),
    ("scoring", True, "an object", lambda v: isinstance(v, dict)),
    ("scoring.rule", False, f"one of {', '.join(SCORE_RULES)}", _one_of(SCORE_RULES)),
    ("scoring.map_threshold", True, "a number", _number),
    ("scoring.image_threshold", True, "a number", _number),
    ("scoring.map_max", False, "a positive number", lambda v: _number(v) and v > 0),
    ("scoring.text_score_range", False, "[low, high], two numbers with low <= high", _range),
    ("scoring.map_max_range", False, "[low, high], two numbers with low <= high", _range),
    (
        "files",
        True,
        "an object of file name -> sha256 (64 lowercase hex digits)",
        lambda v: isinstance(v, dict) and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in v.values()),
    ),
    (
        "precisions",
        False,
        "an object of variant name -> {components, ...}",
        lambda v: (
            isinstance(v, dict) and all(isinstance(p, dict) and _components(p.get("components")) for p in v.values())
        ),
    ),
)

# Ranges each score rule normalises by (runtime/scoring.py).
RULE_RANGES = {
    "prompt": (),
    "prompt_and_map_mean": ("map_max_range",),
    "normalised_sum": ("text_score_range", "map_max_range"),
}


def _lookup(data: dict, dotted: str) -> Any:
    value: Any = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


def manifest_problems(data: dict) -> list[str]:
    """Every field that is missing or of the wrong form, as 'field: what it needs, got what'."""
    problems = []
    for path, required, form, check in FIELDS:
        value = _lookup(data, path)
        parent = path.rpartition(".")[0]
        if value is MISSING:
            # A missing or malformed parent is reported once, as itself.
            if required and (not parent or isinstance(_lookup(data, parent), dict)):
                problems.append(f"{path} is missing (needs {form})")
        elif not check(value):
            problems.append(f"{path} must be {form}, got {_shown(value)}")
    if not problems:
        problems += _cross_field_problems(data)
    return problems


def scoring_problems(scoring: dict) -> list[str]:
    """The checks of the `scoring` object alone (memory banks carry their own)."""
    return [p for p in manifest_problems({"scoring": scoring}) if p.startswith("scoring.")] + _rule_range_problems(
        scoring
    )


def _cross_field_problems(data: dict) -> list[str]:
    problems = _rule_range_problems(data["scoring"])
    layers = _lookup(data, "clip.layers")
    if layers is not MISSING and max(data["taps"]) > layers:
        problems.append(f"taps must lie within the model's {layers} blocks, got {data['taps']}")
    return problems


def _rule_range_problems(scoring: dict) -> list[str]:
    rule = scoring.get("rule", "prompt")
    return [
        f"scoring.{name} is missing (score rule {rule!r} needs [low, high])"
        for name in RULE_RANGES.get(rule, ())
        if name not in scoring
    ]


def check_manifest(data: dict, source: str, hint: str) -> None:
    """Refuse a manifest with any problem, naming every field at once."""
    problems = manifest_problems(data)
    if problems:
        raise BundleError(f"manifest {source} is invalid: {'; '.join(problems)}; fix the field(s) by hand, or {hint}")
