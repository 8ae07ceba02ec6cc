"""The tensors a served detector takes and returns: one contract for the server, the client, the
python-backend model of a Triton repository and any other Triton client.

A request carries one image, either as the bytes of an image file (`image_bytes`, TYPE_STRING: PNG,
JPEG, BMP, TIFF, ... decoded on the server exactly as `read_image` decodes a file) or as raw
pixels (`pixels`, UINT8 H x W x C with C = 1, 3 (RGB) or 4 (RGBA)). Send encoded files or uint8
frames, never float tensors: a float frame is four times the bytes on the wire.

A reply carries what `Detector` returns locally, in full (no lossy shortcut: a station judging
pixels with its own thresholds needs the real map). Maps and masks of a dynamic batch are padded
to the batch's largest image; `size` says which part is the image. `error` is empty, or the one
line saying why this request's image could not be scored (the other requests of its batch are
scored normally). `record` is the run record: bundle, method, precision, backend, thresholds.
`preview` is the final map small and 8-bit, for dashboards: a client that asks Triton for only
`score`, `is_anomalous` and `preview` gets a few kB per frame instead of the full float map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from ..contract import ANOMALY_MAP
from ..overlay import colour_range
from ..pipeline import DetectionResult
from ..regions import anomalous_regions
from ..sam.cascade import SamRefinement

IMAGE_BYTES = "image_bytes"
PREVIEW = "preview"
PREVIEW_SIDE = 256  # the preview's longer side at most
PIXELS = "pixels"
# name -> (numpy dtype, per-request dims); np.bytes_ is Triton's TYPE_STRING
INPUTS: dict[str, tuple[type, tuple[int, ...]]] = {
    IMAGE_BYTES: (np.bytes_, (1,)),
    PIXELS: (np.uint8, (-1, -1, -1)),
}
OUTPUTS: dict[str, tuple[type, tuple[int, ...]]] = {
    "score": (np.float32, (1,)),
    "is_anomalous": (np.bool_, (1,)),
    "text_score": (np.float32, (1,)),
    "map_peak": (np.float32, (1,)),
    "size": (np.int32, (2,)),
    ANOMALY_MAP: (np.float32, (-1, -1)),
    "mask": (np.uint8, (-1, -1)),
    "refined": (np.bool_, (1,)),
    "refined_map": (np.float32, (-1, -1)),
    "refined_mask": (np.uint8, (-1, -1)),
    "sam_regions": (np.bytes_, (1,)),
    "regions": (np.bytes_, (1,)),
    PREVIEW: (np.uint8, (-1, -1)),
    "error": (np.bytes_, (1,)),
    "record": (np.bytes_, (1,)),
}
# what a client needs to rebuild a DetectionResult (it may leave out `regions`, `preview`, `record`)
RESULT_OUTPUTS = tuple(name for name in OUTPUTS if name not in ("regions", PREVIEW, "record"))
TRITON_DTYPES = {np.float32: "FP32", np.bool_: "BOOL", np.int32: "INT32", np.uint8: "UINT8", np.bytes_: "BYTES"}


@dataclass
class Scored:
    """One request's outcome on the server: a result, or the line saying why there is none."""

    result: DetectionResult | None = None
    error: str = ""


def _padded(maps: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    """Stack maps of different sizes into one [B, H, W] array, top-left aligned, zero padded (at
    least 1 x 1: Triton's shared-memory transfer cannot carry an empty tensor)."""
    height = max((m.shape[0] for m in maps), default=1) or 1
    width = max((m.shape[1] for m in maps), default=1) or 1
    out = np.zeros((len(maps), height, width), dtype)
    for index, item in enumerate(maps):
        out[index, : item.shape[0], : item.shape[1]] = item
    return out


def preview_size(height: int, width: int) -> tuple[int, int]:
    """The preview's (height, width) for an image of that size: longer side at most PREVIEW_SIDE."""
    scale = min(1.0, PREVIEW_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def preview(result: DetectionResult, scoring: dict[str, Any]) -> np.ndarray:
    """The final map, small and 8-bit for a dashboard: downsized (area average) to `preview_size`,
    0..255 over the overlay's colour range, so 128 is about the map threshold."""
    low, high = colour_range(scoring)
    height, width = preview_size(*result.final_map.shape[:2])
    small = cv2.resize(result.final_map, (width, height), interpolation=cv2.INTER_AREA)
    return np.round(np.clip((small - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)


def _text(values: Sequence[str]) -> np.ndarray:
    return np.array([[value.encode("utf-8")] for value in values], dtype=np.bytes_)


def reply_batch(outcomes: Sequence[Scored], record: dict[str, Any]) -> dict[str, np.ndarray]:
    """The output tensors of a batch of requests (axis 0: request)."""
    empty = np.zeros((0, 0), np.float32)
    results = [o.result for o in outcomes]
    refinements = [r.refinement if r is not None else None for r in results]

    def each(pick, default):
        return [pick(r) if r is not None else default for r in results]

    def refined(pick, default):
        return [pick(f) if f is not None else default for f in refinements]

    def regions(result: DetectionResult) -> str:
        listed, total = anomalous_regions(result.refinement.mask if result.refinement is not None else result.mask)
        return json.dumps({"regions": listed, "total": total})

    return {
        "score": np.array(each(lambda r: [r.score], [np.nan]), np.float32),
        "is_anomalous": np.array(each(lambda r: [r.is_anomalous], [False]), np.bool_),
        "text_score": np.array(each(lambda r: [r.text_score], [np.nan]), np.float32),
        "map_peak": np.array(each(lambda r: [r.map_peak], [np.nan]), np.float32),
        "size": np.array(each(lambda r: list(r.anomaly_map.shape[:2]), [0, 0]), np.int32),
        ANOMALY_MAP: _padded(each(lambda r: r.anomaly_map, empty), np.float32),
        "mask": _padded(each(lambda r: r.mask, empty), np.uint8),
        "refined": np.array([[f is not None] for f in refinements], np.bool_),
        "refined_map": _padded(refined(lambda f: f.anomaly_map, empty), np.float32),
        "refined_mask": _padded(refined(lambda f: f.mask, empty), np.uint8),
        "sam_regions": _text(refined(lambda f: json.dumps(list(f.regions)), "[]")),
        "regions": _text(each(regions, "")),
        PREVIEW: _padded(each(lambda r: preview(r, record["scoring"]), np.zeros((1, 1), np.uint8)), np.uint8),
        "error": _text([o.error for o in outcomes]),
        "record": _text([json.dumps(record)] * len(outcomes)),
    }


def _string(value: Any) -> str:
    item = np.asarray(value).reshape(-1)[0]
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)


def result_from_reply(outputs: dict[str, np.ndarray]) -> DetectionResult:
    """One request's reply (no batch axis, or a batch axis of 1) back into a DetectionResult."""
    height, width = (int(v) for v in np.asarray(outputs["size"]).reshape(-1)[:2])

    def plane(name: str, dtype: type) -> np.ndarray:
        array = np.asarray(outputs[name])
        array = array.reshape(array.shape[-2:])
        return np.ascontiguousarray(array[:height, :width], dtype=dtype)

    def number(name: str) -> float:
        return float(np.asarray(outputs[name]).reshape(-1)[0])

    refinement = None
    if bool(np.asarray(outputs["refined"]).reshape(-1)[0]):
        refinement = SamRefinement(
            mask=plane("refined_mask", bool),
            anomaly_map=plane("refined_map", np.float32),
            regions=json.loads(_string(outputs["sam_regions"])),
        )
    return DetectionResult(
        score=number("score"),
        anomaly_map=plane(ANOMALY_MAP, np.float32),
        mask=plane("mask", bool),
        is_anomalous=bool(np.asarray(outputs["is_anomalous"]).reshape(-1)[0]),
        text_score=number("text_score"),
        map_peak=number("map_peak"),
        refinement=refinement,
    )


def reply_error(outputs: dict[str, np.ndarray]) -> str:
    """The reply's error line ("" when the image was scored)."""
    return _string(outputs["error"]) if "error" in outputs else ""


def reply_record(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    return json.loads(_string(outputs["record"]))
