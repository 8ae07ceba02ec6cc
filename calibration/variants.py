"""Add a reduced-precision variant of the image encoder to an existing bundle, behind the drift gate.

Steps: convert the fp32 encoder (calibration/precision.py) into a hidden staging folder inside the
bundle, run the variant and the fp32 detector side by side on the calibration images
(calibration/drift.py), refuse the variant if it drifts beyond tolerance, and only then move its
files in and rewrite the manifest in one rename. A failed or interrupted build leaves the bundle as
it was. The image encoder is nearly all of a frame's compute, and it is the one graph that takes
the image itself, so its calibration feeds are simply preprocessed normal images. int8-dynamic,
which needs no calibration, also converts the heads' linear layers (~2 % of a ViT-B-16 frame on
the CPU). Other graphs (FNN, SAM) stay fp32.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from zsad_edge.runtime.backends.openvino import BF16, OpenVinoComponent, import_openvino
from zsad_edge.runtime.backends.ort import OrtComponent
from zsad_edge.runtime.bundle import REBUILD_HINT, ComponentSpec, load_manifest, sha256_file, write_manifest
from zsad_edge.runtime.contract import HEADS, IMAGE, IMAGE_ENCODER
from zsad_edge.runtime.cpu import int8_dot_product
from zsad_edge.runtime.detector import Detector
from zsad_edge.runtime.errors import ImageReadError, ZsadEdgeError
from zsad_edge.runtime.image_io import check_image, list_images, read_image
from zsad_edge.runtime.preprocess import preprocess_batch

from .drift import DriftTolerance, check_drift, measure_drift
from .precision import PRECISIONS, convert, quantize_input_linear_layers

VARIANTS = (*PRECISIONS, BF16)  # what add-precision adds: converted graphs, and bf16 (a runtime hint)

MIN_CALIBRATION_IMAGES = 4


def load_calibration_images(inputs: Sequence[str | os.PathLike], limit: int | None) -> list:
    """Readable normal images (decoded arrays) from files/folders, the first `limit`; unreadable ones are named."""
    images, unreadable = [], []
    for path in list_images(inputs)[:limit]:
        try:
            images.append(check_image(read_image(path)))
        except ImageReadError as exc:
            unreadable.append(str(exc))
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise ZsadEdgeError(
            f"precision calibration needs at least {MIN_CALIBRATION_IMAGES} readable normal images, "
            f"got {len(images)}" + (f" ({'; '.join(unreadable)})" if unreadable else "")
        )
    return images


def resolve_weight_bits(weight_bits: int | str) -> int:
    """ "auto": 8 where this (the building) CPU has an int8 dot product, else 7 (calibration/precision.py)."""
    if weight_bits == "auto":
        return 8 if int8_dot_product() else 7
    return int(weight_bits)


def add_precision(
    bundle_dir: str | os.PathLike,
    precision: str,
    calibration_images: Sequence,
    calibration_method: str = "percentile",
    tolerance: DriftTolerance = DriftTolerance(),
    weight_bits: int | str = "auto",
) -> dict:
    """Convert, gate and add one variant; returns its manifest record (plan, drift, files).

    calibration_images: decoded arrays of normal images (load_calibration_images); they calibrate
    INT8 activation ranges and are the images the drift gate is measured on.
    weight_bits: int8 weights in 7 or 8 bits, or "auto" (resolve_weight_bits).
    """
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    base = manifest.components.get(IMAGE_ENCODER)
    if base is None:
        raise ZsadEdgeError(f"bundle {bundle_dir} has no {IMAGE_ENCODER!r} component; {REBUILD_HINT}")
    reference = Detector.from_bundle(bundle_dir, backend="cpu", verify=False)
    if precision == BF16:
        return _add_bf16(bundle_dir, manifest, reference, calibration_images, tolerance)
    bits = resolve_weight_bits(weight_bits)

    def feeds():
        for image in calibration_images:
            yield {IMAGE: preprocess_batch([image], manifest.preprocess)}

    staging = Path(tempfile.mkdtemp(prefix=f".{precision}-", dir=bundle_dir))
    try:
        plans, components = _convert_components(
            bundle_dir, manifest, precision, staging, feeds, calibration_method, bits
        )
        graphs = {n: OrtComponent(staging / c.file, "cpu", precision=precision) for n, c in components.items()}
        candidate = Detector(
            bundle_dir, manifest, graphs[IMAGE_ENCODER], graphs.get(HEADS, reference.heads_graph), reference.fnn_graph
        )
        drift = measure_drift(reference, candidate, calibration_images)
        check_drift(drift, tolerance, f"the {precision} image encoder" + (" + heads" if HEADS in components else ""))
        files = [file for c in components.values() for file in (c.file, *c.external_data)]
        for file in files:
            os.replace(staging / file, bundle_dir / file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for file in files:
        manifest.files[file] = sha256_file(bundle_dir / file)
    plan = {**plans[IMAGE_ENCODER], "built_on_int8_dot_product": int8_dot_product()}
    record = {"components": components, "plan": plan, "drift": drift, "tolerance": tolerance.to_dict()}
    if HEADS in plans:
        record["heads_plan"] = plans[HEADS]
    manifest.precisions[precision] = record
    write_manifest(bundle_dir, manifest)
    return record


def _convert_components(
    bundle_dir: Path, manifest, precision: str, staging: Path, feeds, calibration_method: str, weight_bits: int
) -> tuple[dict[str, dict], dict[str, ComponentSpec]]:
    """Convert the encoder (and, for int8-dynamic, the heads' input linear layers) into `staging`;
    returns the plans and component specs of what was converted, by component name."""
    conversions = {IMAGE_ENCODER: lambda src, dst: convert(src, dst, precision, feeds, calibration_method, weight_bits)}
    if precision == "int8-dynamic" and HEADS in manifest.components:
        conversions[HEADS] = lambda src, dst: quantize_input_linear_layers(src, dst, weight_bits)
    plans, components = {}, {}
    for component, conversion in conversions.items():
        base = manifest.components[component]
        name = f"{Path(base.file).stem}.{precision}.onnx"
        plan, side_files = conversion(bundle_dir / base.file, staging / name)
        if plan.weight_nodes == 0 and component != IMAGE_ENCODER:
            continue  # nothing in it to quantize: the variant keeps the fp32 graph
        plans[component] = plan.to_dict()
        components[component] = ComponentSpec(
            file=name,
            inputs=base.inputs,
            outputs=base.outputs,
            precision=precision,
            opset=base.opset,
            external_data=side_files,
        )
    return plans, components


def _add_bf16(bundle_dir: Path, manifest, reference: Detector, images: Sequence, tolerance: DriftTolerance) -> dict:
    """bf16 has no graph of its own: OpenVINO runs the fp32 encoder with a bf16 inference-precision
    hint, on CPUs with native bf16 only (refused elsewhere). Gated and recorded like the converted
    variants; its component points at the fp32 file, so the bundle gains no file."""
    base = manifest.components[IMAGE_ENCODER]
    encoder = OpenVinoComponent(bundle_dir / base.file, import_openvino().Core(), "CPU", BF16)
    candidate = Detector(bundle_dir, manifest, encoder, reference.heads_graph, reference.fnn_graph)
    drift = measure_drift(reference, candidate, images)
    check_drift(drift, tolerance, "the bf16 image encoder (OpenVINO)")
    record = {
        "components": {IMAGE_ENCODER: replace(base, precision=BF16)},
        "plan": {"precision": BF16, "weight_nodes": 0, "runtime": "OpenVINO CPU: the fp32 graph, bf16 inference hint"},
        "drift": drift,
        "tolerance": tolerance.to_dict(),
    }
    manifest.precisions[BF16] = record
    write_manifest(bundle_dir, manifest)
    return record
