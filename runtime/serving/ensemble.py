"""The models of `zsad-edge triton-repo --kind ensemble`: a bundle's graphs as Triton's own model
types, joined by an ensemble that speaks the serving contract (tensors.py).

For a bundle served as model N, version V:

    N/                  platform "ensemble": what clients call (image_bytes or pixels in, the contract out)
    N_preprocess/       python backend: decode, resize, normalise (ensemble_models.py); V/manifest.json
    N_image_encoder/    onnxruntime_onnx (V/model.onnx), or tensorrt_plan (V/model.smXY.plan per GPU)
    N_heads/            the same, on the encoder's outputs
    N_fnn/              FNN bundles: the same
    N_postprocess/      python backend: FNN fusion, smoothing, score rule, resize, thresholds

The graph models' inputs and outputs are read from the ONNX graphs themselves (and must agree with
the manifest); every tensor an ensemble step passes on is checked to have the same type and dims
at both ends (`check_ensemble`), so a repository that loads nowhere is refused here, not on the
server. With `gpu`, onnxruntime models get the TensorRT accelerator at the bundle variant's
precision, with an engine cache on the server; with engine folders (`zsad-edge engines` on each
GPU kind), the graphs become tensorrt_plan models, one plan per compute capability.

CLIP-SAM bundles are refused: their refinement runs SAM on the original image for the flagged
images only, a data-dependent cascade an ensemble cannot express (the python kind serves them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..backends.ort import EXTENDED_OPTIMIZATION_ONLY
from ..bundle import Manifest
from ..contract import ANOMALY_MAP, FNN, FNN_FUSION, HEADS, IMAGE, IMAGE_ENCODER, IMAGE_SCORE, MANIFEST_FILE, METHODS
from ..errors import BundleError, ZsadEdgeError
from .ensemble_models import FNN_MAP, FNN_SCORE, GRAPHS_PARAMETER, IMAGE_SIZE, MODEL_MAP, MODEL_SCORE
from .model_config import TensorTable, config_proto, declare, proto_type, python_model_config
from .tensors import INPUTS, OUTPUTS

ONNX_PLATFORM, PLAN_PLATFORM = "onnxruntime_onnx", "tensorrt_plan"
ONNX_MODEL_FILE = "model.onnx"
# the ORT TensorRT accelerator's precision_mode per bundle variant (the precision is in the graph)
TRT_PRECISION_MODES = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
TRT_WORKSPACE_BYTES = 2 << 30
ONNX_EXTRA = "pip install 'zsad-edge[serve]'"


@dataclass(frozen=True)
class GraphTensor:
    """One input or output of an ONNX graph: name, numpy dtype and shape (symbolic dims as names)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]

    def table_entry(self) -> tuple[type, tuple[int, ...]]:
        """(dtype, dims) as the python models declare the same tensor."""
        return self.dtype.type, tuple(self.triton_dims()[0])

    def triton_dims(self) -> tuple[list[int], bool]:
        """Triton's dims without the batch axis (unknown sizes -1), and whether a reshape to a
        scalar is needed: a [batch] tensor is declared as dims [1] with `reshape { shape: [] }`."""
        if not self.shape or not isinstance(self.shape[0], str):
            raise BundleError(f"graph tensor {self.name!r} has no leading batch axis ({list(self.shape)})")
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in self.shape[1:]]
        return (dims, False) if dims else ([1], True)


def onnx_io(path: Path) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The graph's own inputs and outputs (weights are not loaded)."""
    try:
        import onnx
        from onnx.helper import tensor_dtype_to_np_dtype
    except ImportError:
        raise ZsadEdgeError(f"writing an ensemble reads the ONNX graphs with the onnx package: {ONNX_EXTRA}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}

    def tensors(values: Iterable) -> list[GraphTensor]:
        return [
            GraphTensor(
                value.name,
                np.dtype(tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)),
                tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim),
            )
            for value in values
            if value.name not in weights
        ]

    return tensors(graph.input), tensors(graph.output)


def checked_graph_io(bundle: Path, manifest: Manifest, component: str) -> tuple[list[GraphTensor], list[GraphTensor]]:
    """The component's graph I/O, refused where it differs from what the manifest says."""
    spec = manifest.components[component]
    inputs, outputs = onnx_io(bundle / spec.file)
    for kind, graph, listed in (("inputs", inputs, spec.inputs), ("outputs", outputs, spec.outputs)):
        found = [(t.name, list(t.shape), t.dtype.name) for t in graph]
        wanted = [(t.name, list(t.shape), np.dtype(t.dtype).name) for t in listed]
        if found != wanted:
            raise BundleError(
                f"the {spec.file} graph's {kind} {found} differ from the manifest's {wanted}: "
                "a graph was replaced; rebuild the bundle"
            )
    return inputs, outputs


@dataclass(frozen=True)
class Plan:
    """A TensorRT engine for one component on one compute capability, found in an engine folder."""

    path: Path
    compute_capability: str
    tensorrt_version: str
    max_batch: int


def find_plans(folders: Iterable[Path], manifest: Manifest, component: str) -> dict[str, Plan]:
    """Engines built by `zsad-edge engines` for exactly this graph, by compute capability."""
    spec, digest = manifest.components[component], manifest.component_digest(component)
    plans: dict[str, Plan] = {}
    for folder in folders:
        record_path = Path(folder) / f"{component}.{spec.precision}.json"
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            key = record["key"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if key.get("onnx_sha256") != digest:
            continue
        capability = str(key["compute_capability"])
        if capability in plans:
            raise ZsadEdgeError(
                f"two engines of {component} for compute capability {capability} ({plans[capability].path} and "
                f"{folder}): pass one engine folder per GPU kind"
            )
        batch = key.get("profile", {}).get("batch", [1, 1, 1])
        engine = Path(folder) / f"{component}.{spec.precision}.engine"
        plans[capability] = Plan(engine, capability, str(key.get("tensorrt_version")), int(batch[-1]))
    if not plans:
        raise ZsadEdgeError(
            f"no engine of {component} ({spec.precision}) for this bundle in {', '.join(map(str, folders))}: "
            "build them with `python export/build_engines.py engines BUNDLE` on each GPU kind"
        )
    return plans


def _plan_file(capability: str) -> str:
    return f"model.sm{capability.replace('.', '')}.plan"


def add_tensor(collection, tensor: GraphTensor) -> None:
    """Declare a graph tensor in a config's input or output list."""
    dims, scalar = tensor.triton_dims()
    entry = collection.add(name=tensor.name, data_type=proto_type(tensor.dtype))
    entry.dims.extend(dims)
    if scalar:
        entry.reshape.SetInParent()  # present and empty: the model's tensor is [batch]


# the heads' and the FNN's (anomaly_map, image_score), as the ensemble names them
RENAMED_OUTPUTS = {HEADS: (MODEL_MAP, MODEL_SCORE), FNN: (FNN_MAP, FNN_SCORE)}


@dataclass(frozen=True)
class EnsembleModels:
    """The configs of every model of one bundle's ensemble, by model name, and the files to write."""

    configs: dict[str, object]
    files: dict[str, list[tuple[Path | str, str]]]  # model -> (source file or text, path in the version folder)


def graph_model_config(name: str, inputs, outputs, options, plans: dict[str, Plan] | None):
    """A graph as an onnxruntime_onnx model, or as a tensorrt_plan model with one plan per GPU kind."""
    proto = config_proto()
    config = proto.ModelConfig(name=name, platform=PLAN_PLATFORM if plans else ONNX_PLATFORM)
    config.max_batch_size = options.max_batch
    for tensor in inputs:
        add_tensor(config.input, tensor)
    for tensor in outputs:
        add_tensor(config.output, tensor)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    kind = proto.ModelInstanceGroup.KIND_GPU if options.gpu or plans else proto.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=options.instances)
    if plans:
        for capability in sorted(plans):
            config.cc_model_filenames[capability] = _plan_file(capability)
    if not plans and options.precision in EXTENDED_OPTIMIZATION_ONLY:
        config.optimization.graph.level = 1  # the onnxruntime backend's ORT_ENABLE_EXTENDED, as the runtime
    if not plans and options.gpu:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = TRT_PRECISION_MODES[options.precision]
        accelerator.parameters["max_workspace_size_bytes"] = str(TRT_WORKSPACE_BYTES)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = f"{options.trt_cache}/{name}"
    return config


def ensemble_models(bundle: Path, manifest: Manifest, name: str, version: int, options) -> EnsembleModels:
    """Every config of the ensemble, checked (`check_ensemble`), and what each version folder holds."""
    method = METHODS[manifest.method["name"]]
    if manifest.method.get("params", {}).get("sam"):
        raise ZsadEdgeError(
            "a CLIP-SAM bundle cannot be an ensemble (SAM refines the flagged images on the original image): "
            "use --kind python"
        )
    if options.gpu and options.precision not in TRT_PRECISION_MODES and not options.engines:
        raise ZsadEdgeError(
            f"the {options.precision} variant runs on onnxruntime's CPU provider only: for a GPU server use "
            f"{' or '.join(TRT_PRECISION_MODES)}"
        )
    graphs = [IMAGE_ENCODER, HEADS, *([FNN] if FNN_FUSION in method.post_stages else [])]
    io = {component: checked_graph_io(bundle, manifest, component) for component in graphs}
    models = EnsembleModels({}, {})
    for component in graphs:
        _add_graph_model(models, bundle, manifest, f"{name}_{component}", component, io[component], options)
    pre_outputs, post_inputs = _add_python_models(models, bundle, name, io, options)
    ensemble = config_proto().ModelConfig(name=name, platform="ensemble", max_batch_size=options.max_batch)
    declare(ensemble.input, INPUTS, optional=True)
    declare(ensemble.output, OUTPUTS)
    scheduling = ensemble.ensemble_scheduling
    _step(scheduling, f"{name}_preprocess", version, {n: n for n in INPUTS}, {n: n for n in pre_outputs})
    _, encoder_outputs = io[IMAGE_ENCODER]
    _step(scheduling, f"{name}_{IMAGE_ENCODER}", version, {IMAGE: IMAGE}, {t.name: t.name for t in encoder_outputs})
    for component in graphs[1:]:
        map_name, score_name = RENAMED_OUTPUTS[component]
        _step(scheduling, f"{name}_{component}", version, {t.name: t.name for t in io[component][0]},
              {ANOMALY_MAP: map_name, IMAGE_SCORE: score_name})  # fmt: skip
    _step(scheduling, f"{name}_postprocess", version, {n: n for n in post_inputs}, {n: n for n in OUTPUTS})
    models.configs[name], models.files[name] = ensemble, []
    check_ensemble(ensemble, models.configs)
    return models


def _add_graph_model(models: EnsembleModels, bundle: Path, manifest: Manifest, model: str, component: str, io,
                     options) -> None:  # fmt: skip
    """One graph as a model: its ONNX (and weight files), or its TensorRT plans."""
    spec = manifest.components[component]
    plans = find_plans(options.engines, manifest, component) if options.engines else None
    if plans:
        smallest = min(plans.values(), key=lambda plan: plan.max_batch)
        if smallest.max_batch < options.max_batch:
            raise ZsadEdgeError(
                f"the {component} engine {smallest.path} takes batches up to {smallest.max_batch}: pass "
                f"--max-batch {smallest.max_batch}, or rebuild the engines with --max-batch {options.max_batch}"
            )
        models.files[model] = [(plan.path, _plan_file(capability)) for capability, plan in plans.items()]
    else:
        folder = ONNX_MODEL_FILE + "/" if spec.external_data else ""  # a folder keeps weight files beside it
        models.files[model] = [
            (bundle / spec.file, f"{folder}{ONNX_MODEL_FILE}"),
            *((bundle / extra, folder + extra) for extra in spec.external_data),
        ]
    models.configs[model] = graph_model_config(model, *io, options, plans)


def _add_python_models(models: EnsembleModels, bundle: Path, name: str, io: dict, options) -> tuple[dict, dict]:
    """The pre- and post-processing models, their tensors typed as the graphs they feed and read;
    returns (preprocess outputs, postprocess inputs)."""
    encoder_inputs, _ = io[IMAGE_ENCODER]
    image = next(t for t in encoder_inputs if t.name == IMAGE)
    pre_outputs: TensorTable = {IMAGE: image.table_entry(), IMAGE_SIZE: (np.int32, (2,))}
    post_inputs: TensorTable = {IMAGE_SIZE: (np.int32, (2,))}
    for component in list(io)[1:]:
        produced = {t.name: t for t in io[component][1]}
        map_name, score_name = RENAMED_OUTPUTS[component]
        post_inputs[map_name] = produced[ANOMALY_MAP].table_entry()
        post_inputs[score_name] = produced[IMAGE_SCORE].table_entry()
    pre = python_model_config(f"{name}_preprocess", options, INPUTS, pre_outputs, optional_inputs=True)
    post = python_model_config(f"{name}_postprocess", options, post_inputs, OUTPUTS)
    post.parameters[GRAPHS_PARAMETER].string_value = PLAN_PLATFORM if options.engines else ONNX_PLATFORM
    post.parameters["ensemble"].string_value = name
    post.parameters["precision"].string_value = options.precision
    for step, config in (("preprocess", pre), ("postprocess", post)):
        models.configs[config.name] = config
        models.files[config.name] = [(bundle / MANIFEST_FILE, MANIFEST_FILE), (python_model_text(step), "model.py")]
    return pre_outputs, post_inputs


def _step(scheduling, model: str, version: int, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    step = scheduling.step.add(model_name=model, model_version=version)
    step.input_map.update(inputs)
    step.output_map.update(outputs)


def python_model_text(step: str) -> str:
    """The two-line model.py of the ensemble's pre- or post-processing model."""
    cls = {"preprocess": "EnsemblePreprocess", "postprocess": "EnsemblePostprocess"}[step]
    return (
        f'"""A zsad-edge ensemble\'s {step} step (the bundle\'s manifest.json beside it); made by `zsad-edge '
        f'triton-repo`."""\n\nfrom zsad_edge.runtime.serving.ensemble_models import {cls} as TritonPythonModel  '
        "# noqa: F401\n"
    )


def _dims_match(one: list[int], other: list[int]) -> bool:
    return len(one) == len(other) and all(a == b or -1 in (a, b) for a, b in zip(one, other))


def check_ensemble(ensemble, configs: dict) -> None:
    """Refuse an ensemble whose steps do not fit together: every mapped name exists on its model,
    every tensor passed between steps has the same type and dims at both ends, every required
    input is fed, every ensemble output is produced (what Triton would refuse when loading it)."""
    available = {entry.name: (entry.data_type, list(entry.dims)) for entry in ensemble.input}
    problems: list[str] = []
    for step in ensemble.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"step model {step.model_name!r} is not in the repository")
            continue
        model_inputs = {entry.name: entry for entry in model.input}
        model_outputs = {entry.name: entry for entry in model.output}
        for key, tensor in step.input_map.items():
            entry = model_inputs.get(key)
            if entry is None:
                problems.append(f"{model.name} has no input {key!r}")
            elif tensor not in available:
                problems.append(f"{model.name} input {key!r} reads {tensor!r}, which no earlier step produces")
            elif available[tensor][0] != entry.data_type or not _dims_match(available[tensor][1], list(entry.dims)):
                problems.append(
                    f"{model.name} input {key!r} is {_describe(entry)} but {tensor!r} is "
                    f"{_describe_pair(available[tensor])}"
                )
        for key, entry in model_inputs.items():
            if key not in step.input_map and not entry.optional:
                problems.append(f"{model.name} input {key!r} is not fed")
        for key, tensor in step.output_map.items():
            entry = model_outputs.get(key)
            if entry is None:
                problems.append(f"{model.name} has no output {key!r}")
            else:
                available[tensor] = (entry.data_type, list(entry.dims))
    for entry in ensemble.output:
        produced = available.get(entry.name)
        if produced is None:
            problems.append(f"ensemble output {entry.name!r} is produced by no step")
        elif produced[0] != entry.data_type or not _dims_match(produced[1], list(entry.dims)):
            problems.append(f"ensemble output {entry.name!r} is {_describe(entry)} but its step gives "
                            f"{_describe_pair(produced)}")  # fmt: skip
    if problems:
        raise ZsadEdgeError(f"the ensemble {ensemble.name} does not fit together: " + "; ".join(problems))


def _describe(entry) -> str:
    return _describe_pair((entry.data_type, list(entry.dims)))


def _describe_pair(pair: tuple[int, list[int]]) -> str:
    return f"{config_proto().DataType.Name(pair[0])} {pair[1]}"
