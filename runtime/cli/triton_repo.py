"""`zsad-edge triton-repo`: write a Triton model repository serving a bundle, for a Triton server you run.

--kind python: one python-backend model whose model.py imports the installed lean runtime, the
bundle copied into its version folder, config.pbtxt with dynamic batching and instance groups.
Try it here with `zsad-edge serve --repository REPO` (the tritonserver PyTriton ships), or mount
REPO into NVIDIA's Triton container.
--kind ensemble: the graphs as onnxruntime_onnx models (`--gpu`: with onnxruntime's TensorRT
accelerator) or tensorrt_plan models (`--engines`), python pre/post-processing, an ensemble.
It needs Triton's onnxruntime or TensorRT backend (NVIDIA's container has both; PyTriton's
server has neither). The python models need zsad-edge installed in the server's Python.
Requests and replies are those of `zsad-edge serve` either way (docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..serving.repository import DEFAULT_TRT_CACHE, KINDS, RepositoryOptions, write_repository
from ..stopping import StopRequest
from .common import backend_arguments, trust_arguments

HELP = "write a Triton model repository for a bundle (python backend, or an ensemble of its graphs)"
PARENTS = (backend_arguments(), trust_arguments())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the repository folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--kind", choices=KINDS, default="python", help="one python model, or an ensemble of the graphs"
    )
    parser.add_argument("--max-batch", type=int, default=8, help="Triton's largest dynamic batch")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching delay")
    parser.add_argument("--instances", type=int, default=1, help="model instances (detectors)")
    parser.add_argument(
        "--gpu", action="store_true", help="instances on GPUs (ensemble: onnxruntime with the TensorRT accelerator)"
    )
    parser.add_argument(
        "--engines", type=Path, action="append", default=[],
        help="ensemble: an engine folder from `build_engines.py engines`, one per GPU kind (repeat): tensorrt_plan",
    )  # fmt: skip
    parser.add_argument(
        "--trt-cache", default=DEFAULT_TRT_CACHE, help="ensemble with --gpu: the server's TensorRT engine cache folder"
    )


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    options = RepositoryOptions(
        args.precision, args.backend, args.max_batch, args.max_queue_delay_us, args.instances, args.gpu,
        args.kind, tuple(args.engines), args.trt_cache,
    )  # fmt: skip
    model = write_repository(args.bundle, args.out, options, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "repository": str(args.out),
                "model": model.name,
                "kind": args.kind,
                "models": sorted(p.name for p in args.out.iterdir() if p.is_dir()),
                "versions": [p.name for p in model.iterdir() if p.is_dir()],
            }
        )
    )
    return 0
