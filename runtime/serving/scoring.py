"""Scoring the requests of one server batch: decode each image, score the good ones in one model
call, and give every request its own outcome (a bad image fails only its own request).

Shared by `zsad-edge serve` (PyTriton) and the python-backend model of a Triton repository, so
both answer exactly as the local `Detector` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bundle import manifest_digest
from ..detector import Detector
from ..errors import ZsadEdgeError
from ..image_io import check_image, decode_image
from ..run_record import Recorded, run_record
from .tensors import IMAGE_BYTES, PIXELS, Scored

MODEL_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def request_images(inputs: dict[str, np.ndarray], keep_side: int | None) -> list[np.ndarray | ZsadEdgeError]:
    """The images of one request (a request may carry several along its batch axis), each decoded
    (as the detector decodes a file: `keep_side`) and checked, or the error that says why not."""
    given = [name for name in (IMAGE_BYTES, PIXELS) if inputs.get(name) is not None]
    if len(given) != 1:
        return [ZsadEdgeError(f"a request carries exactly one of the inputs {IMAGE_BYTES!r} or {PIXELS!r}")]
    if given[0] == PIXELS:
        pixels = np.asarray(inputs[PIXELS])
        if pixels.dtype != np.uint8 or pixels.ndim != 4:
            shape = list(pixels.shape)
            return [ZsadEdgeError(f"{PIXELS!r} must be UINT8 [batch, H, W, C], got {pixels.dtype} {shape}")]
        return [_checked(lambda frame=frame: check_image(frame)) for frame in pixels]
    encoded = np.asarray(inputs[IMAGE_BYTES], dtype=object).reshape(-1)
    name = "the request's image"
    return [_checked(lambda data=data: decode_image(_as_bytes(data), name, keep_side)) for data in encoded]


def _as_bytes(data: Any) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def _checked(make) -> np.ndarray | ZsadEdgeError:
    try:
        return check_image(make())
    except ZsadEdgeError as exc:
        return exc


def score_images(detector: Detector, images: Sequence[np.ndarray | ZsadEdgeError]) -> list[Scored]:
    """Score the decodable images in one batch; the others get their error line."""
    good = [image for image in images if not isinstance(image, ZsadEdgeError)]
    results = iter(detector.detect_batch(good) if good else [])
    return [Scored(error=str(image)) if isinstance(image, ZsadEdgeError) else Scored(next(results)) for image in images]


def score_requests(detector: Detector, requests: Sequence[Sequence[np.ndarray | ZsadEdgeError]]) -> list[list[Scored]]:
    """The images of several requests scored in one batch; the outcomes grouped back by request."""
    outcomes = iter(score_images(detector, [image for request in requests for image in request]))
    return [[next(outcomes) for _ in request] for request in requests]


def model_version(digest: str) -> int:
    """Triton versions are positive integers: the manifest digest's first 7 hex digits (< 2**28)."""
    return int(digest[:7], 16) or 1


def served_record(
    detector: Recorded, bundle: Path, name: str, precision: str, memory_bank: Path | None = None
) -> dict[str, Any]:
    """The run record every reply carries: the local one, plus the model's name, version and digest,
    and the whole scoring block (a remote station's overlay colours by it)."""
    digest = manifest_digest(bundle)
    extra = {"model": name, "version": model_version(digest), "scoring": detector.scoring}
    return {**run_record(detector, bundle, precision, memory_bank), **extra}


def model_name(bundle: Path, precision: str) -> str:
    """The bundle folder's name (with a non-fp32 precision appended), in Triton's allowed characters."""
    name = Path(bundle).resolve().name + ("" if precision == "fp32" else f"-{precision}")
    return "".join(c if c in MODEL_NAME_CHARS else "_" for c in name)
