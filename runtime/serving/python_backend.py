"""The model of a Triton repository made by `zsad-edge triton-repo --kind python`.

Each version folder's `model.py` imports `TritonPythonModel` from here, so the repository runs
the installed lean runtime, not a copy of it: the bundle sits beside `model.py`, the precision and
backend come from the model's `parameters` in config.pbtxt. Runs inside Triton's python-backend
stub, whose interpreter must have zsad-edge installed (docs/serving.md).

Unlike PyTriton, the python backend can fail one request of a batch on its own: a request whose
image cannot be decoded gets a Triton error, the others of its batch their results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..detector import Detector
from .scoring import request_images, score_requests, served_record
from .tensors import INPUTS, reply_batch

BUNDLE_FOLDER = "bundle"


class TritonPythonModel:
    """What Triton's python backend calls: initialize, execute, finalize."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        bundle = Path(args["model_repository"]) / args["model_version"] / BUNDLE_FOLDER
        precision = parameters.get("precision", "fp32")
        self.detector = Detector.from_bundle(bundle, backend=parameters.get("backend", "auto"), precision=precision)
        self.record = served_record(self.detector, bundle, config["name"], precision)

    def execute(self, requests: list) -> list:
        pb = self._pb
        images = []
        for request in requests:
            images.append(request_images(contract_inputs(pb, request), self.detector.decode_keep_side))
        responses = []
        for mine in score_requests(self.detector, images):
            failed = [outcome.error for outcome in mine if outcome.result is None]
            if failed:
                error = pb.TritonError(f"ZsadEdgeError: {failed[0]}")
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
                continue
            outputs = reply_batch(mine, self.record)
            tensors = [pb.Tensor(name, as_triton_tensor(array)) for name, array in outputs.items()]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.detector = None


def contract_inputs(pb, request) -> dict[str, np.ndarray | None]:
    """A python-backend request's inputs of the serving contract (None where not sent)."""
    tensors = {name: pb.get_input_tensor_by_name(request, name) for name in INPUTS}
    return {name: tensor.as_numpy() if tensor is not None else None for name, tensor in tensors.items()}


def as_triton_tensor(array: np.ndarray) -> np.ndarray:
    """TYPE_STRING tensors travel as numpy object arrays of bytes in the python backend."""
    return array.astype(np.object_) if array.dtype.kind == "S" else array
