"""TensorRT optimisation profiles from the manifest's tensor specs, and the shape strings that
trtexec and onnxruntime's TensorRT provider take.

An engine only accepts shapes inside the (min, opt, max) range it was built for, and is fastest at
opt. Each dynamic dimension of an exported graph carries a name ("batch", "prompts", "points"), so
one table of ranges per name covers every component: the image encoder's batch, the SAM decoder's
prompts (one per anomalous region) and points per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ...bundle import TensorSpec
from ...errors import ZsadEdgeError

Shape = tuple[int, ...]


def _default_ranges() -> dict[str, tuple[int, int, int]]:
    # batch: camera stations send one frame at a time, folders up to 8; prompts: CascadeConfig's
    # max_regions (8); points: 3 positive + 3 negative + 1 padding point (7), or a box (2 corners).
    return {"batch": (1, 1, 8), "prompts": (1, 1, 8), "points": (1, 7, 16)}


@dataclass(frozen=True)
class ProfileConfig:
    """(min, opt, max) per named dynamic dimension."""

    ranges: dict[str, tuple[int, int, int]] = field(default_factory=_default_ranges)

    def __post_init__(self) -> None:
        for name, (low, opt, high) in self.ranges.items():
            if not 1 <= low <= opt <= high:
                raise ZsadEdgeError(
                    f"profile range for {name!r} must satisfy 1 <= min <= opt <= max, got {(low, opt, high)}"
                )

    def with_max_batch(self, max_batch: int) -> "ProfileConfig":
        """The same profile with another largest batch (the opt batch is kept where it still fits)."""
        low, opt, _ = self.ranges["batch"]
        return ProfileConfig({**self.ranges, "batch": (low, min(opt, max_batch), max_batch)})

    def to_dict(self) -> dict[str, list[int]]:
        return {name: list(r) for name, r in sorted(self.ranges.items())}


@dataclass(frozen=True)
class InputProfile:
    """The shapes one dynamic input is built for."""

    min: Shape
    opt: Shape
    max: Shape


def profile_shapes(inputs: Sequence[TensorSpec], config: ProfileConfig) -> dict[str, InputProfile]:
    """Shapes per dynamic input (static inputs need no profile entry)."""
    shapes: dict[str, InputProfile] = {}
    for spec in inputs:
        dynamic = [d for d in spec.shape if isinstance(d, str)]
        if not dynamic:
            continue
        unknown = [d for d in dynamic if d not in config.ranges]
        if unknown:
            raise ZsadEdgeError(
                f"input {spec.name!r} has dynamic dimension {unknown[0]!r} with no profile range "
                f"(known: {', '.join(sorted(config.ranges))})"
            )
        shapes[spec.name] = InputProfile(*(_shape_at(spec, config, i) for i in range(3)))
    return shapes


def _shape_at(spec: TensorSpec, config: ProfileConfig, which: int) -> Shape:
    """The tensor's shape with every named dimension at its min (0), opt (1) or max (2)."""
    return tuple(config.ranges[d][which] if isinstance(d, str) else int(d) for d in spec.shape)


def max_shape(spec: TensorSpec, config: ProfileConfig) -> Shape:
    """The largest shape a tensor takes under the profile: what device buffers are sized for."""
    return _shape_at(spec, config, 2)


def shape_string(shapes: dict[str, InputProfile], which: str) -> str:
    """ "name:1x3x224x224,other:..." for one of min/opt/max, as trtexec and onnxruntime take it."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(p, which))}" for name, p in shapes.items())
