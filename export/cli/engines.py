"""`engines`: TensorRT engines of a bundle, built on this machine's GPU (export/graphs/trt_target.py).

Precision lives in the ONNX: fp16 and int8 engines come from the bundle's variants, added first
(with the drift gate) when missing and --calibration-images is given. The equivalent trtexec
commands are written to the engine folder even where TensorRT is absent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zsad_edge.runtime.bundle import BASE_PRECISION, load_manifest
from zsad_edge.runtime.errors import ZsadEdgeError

from .arguments import add_calibration_arguments
from .variants import add_variants, calibration_images

HELP = "build TensorRT engines for a bundle on this machine's GPU"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from zsad_edge.calibration.precision import PRECISIONS
    from zsad_edge.runtime.backends.trt.engine import DEFAULT_WORKSPACE_GB

    parser.add_argument("bundle", type=Path, help="the bundle to build engines for")
    # Every precision name is accepted here so that int8-dynamic gets its own explanation (check_engine_precisions).
    add_calibration_arguments(parser, (BASE_PRECISION, *PRECISIONS))
    engines = parser.add_argument_group("TensorRT")
    engines.add_argument("--max-batch", type=int, default=8, help="largest batch the engines accept")
    engines.add_argument("--workspace-gb", type=float, default=DEFAULT_WORKSPACE_GB, help="builder workspace limit")
    engines.add_argument(
        "--engine-cache", type=Path, help="engine folder (default: <bundle>.engines beside the bundle)"
    )


def run(args: argparse.Namespace) -> int:
    from zsad_edge.export.graphs.trt_target import build_trt_engines, check_engine_precisions
    from zsad_edge.runtime.backends.components import EngineOptions
    from zsad_edge.runtime.backends.trt.engine import current_device
    from zsad_edge.runtime.backends.trt.profiles import ProfileConfig

    precisions = args.precision or [BASE_PRECISION]
    check_engine_precisions(precisions)
    if args.max_batch < 1 or args.workspace_gb <= 0:
        raise ZsadEdgeError("--max-batch must be >= 1 and --workspace-gb > 0")
    existing = set(load_manifest(args.bundle, verify_hashes=False).precisions)
    missing = [p for p in precisions if p not in existing and p != BASE_PRECISION]
    if missing:
        try:
            current_device()  # before the bundle changes: variants are added here only for engines
        except ZsadEdgeError as exc:
            raise ZsadEdgeError(
                f"{exc}; nothing was changed (add the {' and '.join(missing)} variant(s) without TensorRT with "
                "`add-precision`, then run `engines` on the GPU machine)"
            ) from None
    add_variants(args.bundle, args, missing, calibration_images(args, missing))
    options = EngineOptions(args.engine_cache, ProfileConfig().with_max_batch(args.max_batch), args.workspace_gb)
    for built in build_trt_engines(args.bundle, precisions, options):
        print(
            f"{built['component']} {built['precision']} engine ready: {built['engine']} "
            f"({built['gpu']}, TensorRT {built['tensorrt']})"
        )
    return 0
