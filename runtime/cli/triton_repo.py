"""`zsad-edge triton-repo`: write a Triton model repository serving a bundle, for a Triton server you run.

--kind python: one python-backend model whose model.py imports the installed lean runtime, the
bundle copied into its version folder, config.pbtxt with dynamic batching and instance groups.
The server's Python needs zsad-edge installed (with the backend's extra). Try it here with
`zsad-edge serve --repository REPO` (the tritonserver PyTriton ships), or mount REPO into
NVIDIA's Triton container. Requests and replies are those of `zsad-edge serve` (docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..serving.repository import RepositoryOptions, write_python_repository
from ..stopping import StopRequest
from .common import backend_arguments

HELP = "write a Triton model repository for a bundle (python backend)"
PARENTS = (backend_arguments(),)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the repository folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--kind", choices=("python",), default="python", help="the model type")
    parser.add_argument("--max-batch", type=int, default=8, help="Triton's largest dynamic batch")
    parser.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batching delay")
    parser.add_argument("--instances", type=int, default=1, help="model instances (detectors)")
    parser.add_argument("--gpu", action="store_true", help="instances on GPUs (KIND_GPU) instead of CPUs")


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    options = RepositoryOptions(
        args.precision, args.backend, args.max_batch, args.max_queue_delay_us, args.instances, args.gpu
    )
    model = write_python_repository(args.bundle, args.out, options, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "repository": str(args.out),
                "model": model.name,
                "versions": [p.name for p in model.iterdir() if p.is_dir()],
            }
        )
    )
    return 0
