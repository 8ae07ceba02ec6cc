"""`zsad-edge serve`: serve bundles to many cameras through NVIDIA Triton Inference Server (PyTriton).

Each BUNDLE becomes a Triton model named after its folder (with `-PRECISION` for a variant), its
version taken from the manifest's sha256. A request sends one image as file bytes (`image_bytes`,
PNG/JPEG/...) or uint8 pixels (`pixels`, H x W x C); the reply holds the score, the verdict, the
anomaly map and mask at the image's size, the regions, CLIP-SAM's refinement where the bundle has
one, and the run record (docs/serving.md). Clients: `RemoteDetector`, `zsad-edge watch --server`,
or any Triton client. Triton's own endpoints: /v2/health/ready, /v2/models/NAME, metrics on
--metrics-port. Listens on 127.0.0.1 unless --bind says otherwise. SIGINT/SIGTERM stops Triton
and removes its temporary workspace.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..serving.server import Batching, Ports, serve, serve_repository, served_model
from ..stopping import StopRequest
from .common import backend_arguments, open_detector, trust_arguments

HELP = "serve bundles through Triton Inference Server (HTTP and gRPC, dynamic batching)"
PARENTS = (backend_arguments(), trust_arguments())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", type=Path, nargs="*", metavar="BUNDLE")
    parser.add_argument(
        "--repository", type=Path, help="instead of bundles: run tritonserver on a repository made by `triton-repo`"
    )
    parser.add_argument(
        "--memory-bank", type=Path, help="few-shot: a bank written by `zsad-edge fit-normal` (one bundle)"
    )
    parser.add_argument("--bind", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-batch", type=int, default=8, help="Triton's largest dynamic batch")
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="how long Triton holds a request to batch it with others"
    )
    parser.add_argument("--instances", type=int, default=1, help="detectors per bundle (batches run at once)")


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    from ..errors import ZsadEdgeError

    ports = Ports(args.bind, args.http_port, args.grpc_port, args.metrics_port)
    if bool(args.bundles) == bool(args.repository):
        raise ZsadEdgeError("serve wants BUNDLE... or --repository REPO (one of them)")
    if args.repository:
        serve_repository(args.repository, ports, stop)
        return 0
    if args.memory_bank is not None and len(args.bundles) != 1:
        raise ZsadEdgeError("--memory-bank belongs to one bundle: serve that bundle alone")
    if min(args.max_batch, args.instances) < 1 or args.max_queue_delay_us < 0:
        raise ZsadEdgeError("--max-batch and --instances must be at least 1, --max-queue-delay-us at least 0")
    models = []
    for bundle in args.bundles:  # every bundle is opened (and verified) before Triton starts
        detectors = [
            open_detector(bundle, args.backend, args.memory_bank, precision=args.precision, device=args.device)
            for _ in range(args.instances)
        ]
        models.append(served_model(bundle, detectors, args.precision, args.memory_bank))
    names = {model.name for model in models}
    if len(names) != len(models):
        raise ZsadEdgeError("two bundles would get the same model name: give their folders different names")

    def ready() -> None:
        served = [{"model": m.name, "version": m.version, "method": m.record["method"]} for m in models]
        print(json.dumps({"serving": served, "http": f"{ports.bind}:{ports.http}", "grpc": f"{ports.bind}:{ports.grpc}",
                          "metrics": f"{ports.bind}:{ports.metrics}"}), flush=True)  # fmt: skip

    serve(models, ports, Batching(args.max_batch, args.max_queue_delay_us, args.instances), stop, ready)
    return 0  # a stop signal is how a server ends
