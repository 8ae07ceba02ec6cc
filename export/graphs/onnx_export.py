"""Exporting torch modules to ONNX and proving the graphs match their modules.

Graphs are exported with torch's dynamo exporter at batch 2 (a batch of 1 can bake the batch into
attention reshapes) with a dynamic batch dimension, checked by onnx.checker from the file path
(weights may sit in a .onnx.data side file), then run in onnxruntime at several batch sizes and
compared with the module; export fails with the numbers when they disagree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from zsad_edge.runtime.backends.ort import OrtComponent
from zsad_edge.runtime.bundle import ComponentSpec, TensorSpec
from zsad_edge.runtime.comparison import relative_error
from zsad_edge.runtime.errors import ParityError

LOG = logging.getLogger(__name__)
OPSET = 18
MAX_BATCH = 64


@dataclass
class ParityReport:
    """Worst disagreement of one exported graph over the checked batch sizes, per output."""

    batch_sizes: list[int]
    max_abs_error: dict[str, float]
    relative_error: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "batch_sizes": self.batch_sizes,
            "max_abs_error": self.max_abs_error,
            "relative_error": self.relative_error,
        }


def export_module(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple[dict, ...] | None = None,
) -> ComponentSpec:
    """Export and check a module; returns the manifest entry.

    By default every input gets one shared dynamic leading batch dimension; `dynamic_shapes`
    (torch.export's per-input {axis: Dim} form) overrides that, e.g. for SAM's decoder whose
    prompt and point counts vary but whose image embedding does not.
    """
    module = module.eval()
    if dynamic_shapes is None:
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with torch.no_grad():
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
        )
    onnx.checker.check_model(str(path))
    model = onnx.load(str(path), load_external_data=False)
    external = sorted(
        {entry.value for tensor in model.graph.initializer for entry in tensor.external_data if entry.key == "location"}
    )
    return ComponentSpec(
        file=path.name,
        inputs=[_tensor_spec(v) for v in model.graph.input],
        outputs=[_tensor_spec(v) for v in model.graph.output],
        precision="fp32",
        opset=next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        external_data=external,
    )


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
    return TensorSpec(name=value.name, shape=dims, dtype=dtype)


@torch.no_grad()
def check_parity(
    module: nn.Module, onnx_path: Path, make_inputs, batch_sizes: Sequence[int], tolerance: float
) -> ParityReport:
    """Run module and graph on the same inputs; raise ParityError if any output's error,
    relative to that output's range, exceeds `tolerance`.

    make_inputs(batch) returns the torch input tuple for a batch size.
    """
    graph = OrtComponent(onnx_path, backend="cpu")
    max_abs: dict[str, float] = {}
    relative: dict[str, float] = {}
    for batch in batch_sizes:
        inputs = make_inputs(batch)
        expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        actual = graph.run({name: t.numpy() for name, t in zip(graph.input_names, inputs)})
        for name, want in zip(graph.output_names, expected):
            want = want.numpy()
            got = actual[name]
            if got.shape != want.shape:
                raise ParityError(
                    f"{onnx_path.name}: output {name} has shape {got.shape}, torch gives {want.shape} at batch {batch}"
                )
            max_abs[name] = max(max_abs.get(name, 0.0), float(np.abs(got - want).max()))
            relative[name] = max(relative.get(name, 0.0), relative_error(got, want))
    report = ParityReport(list(batch_sizes), max_abs, relative)
    worst = max(relative, key=relative.get)
    LOG.info("%s parity: worst relative error %.2e (%s)", onnx_path.name, relative[worst], worst)
    if relative[worst] > tolerance:
        raise ParityError(
            f"{onnx_path.name} disagrees with PyTorch: output {worst} relative error {relative[worst]:.3e} "
            f"(max abs {max_abs[worst]:.3e}) exceeds tolerance {tolerance:.1e} at batch sizes {list(batch_sizes)}"
        )
    return report
