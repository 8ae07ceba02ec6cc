"""`zsad-edge triton-repo`: a Triton model repository for a server you run yourself.

Kind `python`: one python-backend model running the lean runtime on the bundle.

    REPO/MODEL/config.pbtxt          built as Triton's ModelConfig protobuf, written as text
    REPO/MODEL/VERSION/model.py      two lines: the lean runtime's python-backend model
    REPO/MODEL/VERSION/bundle/       a copy of the bundle (verified first)

Kind `ensemble`: the bundle's graphs as onnxruntime_onnx or tensorrt_plan models, python-backend
pre- and post-processing, and an ensemble named MODEL joining them (ensemble.py).

Either way clients call MODEL with the serving contract (tensors.py). VERSION is taken from the
manifest's sha256 (as `zsad-edge serve` names it), so two bundles side by side are two versions of
one model. Every config is made through `model_config_pb2` (the protobuf Triton itself parses) and
parsed back before the repository is moved into place: a repository that exists was written whole.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..bundle import BASE_PRECISION, load_manifest
from ..errors import ZsadEdgeError
from .ensemble import ensemble_models
from .model_config import CONFIG_FILE, config_text, python_model_config
from .python_backend import BUNDLE_FOLDER
from .scoring import manifest_digest, model_name, model_version
from .tensors import INPUTS, OUTPUTS

KINDS = ("python", "ensemble")
DEFAULT_TRT_CACHE = "/tmp/zsad-edge-trt-cache"  # a folder on the server
MODEL_PY = '''"""A zsad-edge bundle (./bundle) served by Triton's python backend; made by `zsad-edge triton-repo`."""

from zsad_edge.runtime.serving.python_backend import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    """kind: python or ensemble; gpu: instances on GPUs (ensemble: onnxruntime with TensorRT);
    engines: engine folders of `zsad-edge engines` (ensemble: tensorrt_plan models);
    trt_cache: where onnxruntime's TensorRT accelerator caches engines on the server."""

    precision: str = BASE_PRECISION
    backend: str = "auto"
    max_batch: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    gpu: bool = False
    kind: str = "python"
    engines: tuple[Path, ...] = ()
    trt_cache: str = DEFAULT_TRT_CACHE


def python_model(name: str, bundle: Path, options: RepositoryOptions) -> tuple[dict, dict]:
    """The python kind: one model running the runtime on a copy of the bundle."""
    config = python_model_config(name, options, INPUTS, OUTPUTS, optional_inputs=True, gpu=options.gpu)
    config.parameters["precision"].string_value = options.precision
    config.parameters["backend"].string_value = options.backend
    return {name: config}, {name: [(MODEL_PY, "model.py")]}


def _check(options: RepositoryOptions) -> None:
    if options.kind not in KINDS:
        raise ZsadEdgeError(f"--kind must be one of {', '.join(KINDS)}, got {options.kind!r}")
    if min(options.max_batch, options.instances) < 1 or options.max_queue_delay_us < 0:
        raise ZsadEdgeError("--max-batch and --instances must be at least 1, --max-queue-delay-us at least 0")
    if options.engines and options.kind != "ensemble":
        raise ZsadEdgeError("--engines makes tensorrt_plan models: it needs --kind ensemble")
    missing = [str(folder) for folder in options.engines if not Path(folder).is_dir()]
    if missing:
        raise ZsadEdgeError(f"no engine folder at {', '.join(missing)}: build engines with `build_engines.py engines`")


def write_repository(bundle: Path, out: Path, options: RepositoryOptions, overwrite: bool = False) -> Path:
    """Write the repository of one bundle; returns the folder of the model clients call."""
    if out.exists() and not overwrite:
        raise ZsadEdgeError(f"{out} exists: choose another --out, or pass --overwrite to replace it")
    _check(options)
    manifest = load_manifest(bundle, verify_hashes=True).with_precision(options.precision)  # refused now
    name = model_name(bundle, options.precision)
    version = model_version(manifest_digest(bundle))
    if options.kind == "python":
        configs, files = python_model(name, bundle, options)
    else:
        models = ensemble_models(bundle, manifest, name, version, options)
        configs, files = models.configs, models.files
    texts = {model: config_text(config) for model, config in configs.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for model, text in texts.items():
            (staging / model).mkdir()
            (staging / model / CONFIG_FILE).write_text(text)
            copy_into(staging / model / str(version), files[model])
        if options.kind == "python":
            shutil.copytree(bundle, staging / name / str(version) / BUNDLE_FOLDER)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / name


def copy_into(version_folder: Path, files: list[tuple[Path | str, str]]) -> None:
    """Write a model's files into its version folder: copies of bundle files, or generated text."""
    version_folder.mkdir(parents=True, exist_ok=True)
    for source, relative in files:
        target = version_folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_text(source)
