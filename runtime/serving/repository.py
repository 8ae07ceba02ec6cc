"""`zsad-edge triton-repo`: a Triton model repository for a server you run yourself.

Layout (kind `python`):

    REPO/MODEL/config.pbtxt          built as Triton's ModelConfig protobuf, written as text
    REPO/MODEL/VERSION/model.py      two lines: the lean runtime's python-backend model
    REPO/MODEL/VERSION/bundle/       a copy of the bundle (verified first)

VERSION is taken from the manifest's sha256 (as `zsad-edge serve` names it), so two bundles
side by side are two versions of one model. Every config is made through `model_config_pb2`
(the protobuf Triton itself parses), then parsed back from the file before the repository is
moved into place: a repository that exists was written whole.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import BASE_PRECISION, load_manifest
from ..errors import ZsadEdgeError
from .python_backend import BUNDLE_FOLDER
from .scoring import manifest_digest, model_name, model_version
from .tensors import INPUTS, OUTPUTS

REMOTE_EXTRA = "pip install 'zsad-edge[remote]'"
CONFIG_FILE = "config.pbtxt"
PROTO_TYPES = {np.float32: "TYPE_FP32", np.bool_: "TYPE_BOOL", np.int32: "TYPE_INT32", np.uint8: "TYPE_UINT8",
               np.bytes_: "TYPE_STRING"}  # fmt: skip
MODEL_PY = '''"""A zsad-edge bundle (./bundle) served by Triton's python backend; made by `zsad-edge triton-repo`."""

from zsad_edge.runtime.serving.python_backend import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    precision: str = BASE_PRECISION
    backend: str = "auto"
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    gpu: bool = False


def config_proto():
    """Triton's ModelConfig protobuf module (shipped by tritonclient[grpc])."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ZsadEdgeError(f"writing a Triton repository needs tritonclient: {REMOTE_EXTRA}") from None
    return model_config_pb2


def python_model_config(name: str, options: RepositoryOptions):
    """The config of a python-backend model speaking the serving contract (tensors.py)."""
    proto = config_proto()
    config = proto.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch)
    for tensor_name, (dtype, dims) in INPUTS.items():
        entry = config.input.add(name=tensor_name, data_type=getattr(proto, PROTO_TYPES[dtype]), optional=True)
        entry.dims.extend(dims)
    for tensor_name, (dtype, dims) in OUTPUTS.items():
        config.output.add(name=tensor_name, data_type=getattr(proto, PROTO_TYPES[dtype])).dims.extend(dims)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    kind = proto.ModelInstanceGroup.KIND_GPU if options.gpu else proto.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=options.instances)
    config.parameters["precision"].string_value = options.precision
    config.parameters["backend"].string_value = options.backend
    return config


def parse_config(text: str):
    """Parse config.pbtxt text as Triton does; unknown fields, bad enums and bad values refused."""
    from google.protobuf import text_format

    proto = config_proto()
    try:
        return text_format.Parse(text, proto.ModelConfig())
    except text_format.ParseError as exc:
        raise ZsadEdgeError(f"invalid {CONFIG_FILE}: {exc}") from None


def write_python_repository(bundle: Path, out: Path, options: RepositoryOptions, overwrite: bool = False) -> Path:
    """Write REPO/MODEL/{config.pbtxt, VERSION/{model.py, bundle/}}; returns the model folder."""
    from google.protobuf import text_format

    if out.exists() and not overwrite:
        raise ZsadEdgeError(f"{out} exists: choose another --out, or pass --overwrite to replace it")
    if min(options.max_batch, options.instances) < 1 or options.max_queue_delay_us < 0:
        raise ZsadEdgeError("--max-batch and --instances must be at least 1, --max-queue-delay-us at least 0")
    load_manifest(bundle, verify_hashes=True).with_precision(options.precision)  # refused now, not in the server
    name = model_name(bundle, options.precision)
    version = model_version(manifest_digest(bundle))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model = staging / name
        (model / str(version)).mkdir(parents=True)
        text = text_format.MessageToString(python_model_config(name, options))
        parse_config(text)
        (model / CONFIG_FILE).write_text(text)
        (model / str(version) / "model.py").write_text(MODEL_PY)
        shutil.copytree(bundle, model / str(version) / BUNDLE_FOLDER)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / name
