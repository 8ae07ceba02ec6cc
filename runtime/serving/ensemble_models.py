"""The python-backend models of a Triton ensemble made by `zsad-edge triton-repo --kind ensemble`.

The ensemble runs the bundle's graphs as Triton's own model types (onnxruntime_onnx or
tensorrt_plan); what the graphs do not do runs here, with the lean runtime's own code, so the
ensemble answers as the local `Detector` does:
- `EnsemblePreprocess`: a request's image (`image_bytes` or `pixels`, the serving contract) ->
  the normalised tensor the image encoder takes, and the image's original size;
- `EnsemblePostprocess`: the heads' (and FNN's) model-size map and prompt score -> FNN fusion,
  smoothing, the score rule, resizing to the original size, thresholds: the contract's outputs.
Each version folder holds the bundle's manifest.json beside a two-line model.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import load_manifest
from ..contract import FNN_FUSION, METHODS
from ..errors import ZsadEdgeError
from ..pipeline import NumpyMaps, decode_keep_side
from ..preprocess import preprocess_batch
from ..stages.fnn_fusion import FnnFusion
from .python_backend import as_triton_tensor, contract_inputs
from .scoring import request_images, served_record
from .tensors import Scored, reply_batch

# The tensors passed between the ensemble's steps (besides the graphs' own names).
IMAGE_SIZE = "image_size"  # [2] original (H, W) of each image
MODEL_MAP, MODEL_SCORE = "model_map", "model_score"  # the heads' map and prompt score
FNN_MAP, FNN_SCORE = "fnn_map", "fnn_score"  # the FNN's, for FNN bundles
GRAPHS_PARAMETER = "graphs"  # how the graphs are run (a record field): onnxruntime_onnx or tensorrt_plan


def _model_folder(args: dict) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


class EnsemblePreprocess:
    """Decode and preprocess each request's images as `Detector.prepare` does."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        self.manifest = load_manifest(_model_folder(args), verify_hashes=False)
        self.keep_side = decode_keep_side(self.manifest)
        image = next(o for o in config["output"] if o["name"] != IMAGE_SIZE)
        self.image_name = image["name"]
        self.image_dtype = pb_utils.triton_string_to_numpy(image["data_type"])

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses = []
        for request in requests:
            images = request_images(contract_inputs(pb, request), self.keep_side)
            failed = [image for image in images if isinstance(image, ZsadEdgeError)]
            if failed:
                error = pb.TritonError(f"ZsadEdgeError: {failed[0]}")
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
                continue
            batch = preprocess_batch(images, self.manifest.preprocess).astype(self.image_dtype, copy=False)
            sizes = np.array([image.shape[:2] for image in images], np.int32)
            tensors = [pb.Tensor(self.image_name, batch), pb.Tensor(IMAGE_SIZE, sizes)]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.manifest = None


class GraphlessScoring(NumpyMaps):
    """The runtime's map scoring and FNN fusion, fed by the ensemble's graphs instead of its own."""

    memory_bank = None

    def __init__(self, folder: Path, graphs: str) -> None:
        super().__init__(load_manifest(folder, verify_hashes=False))
        self.graphs = graphs
        self.fusion = None
        if FNN_FUSION in METHODS[self.manifest.method["name"]].post_stages:
            self.fusion = FnnFusion(lambda fnn: fnn, float(self.manifest.method["params"]["fusion_weight"]))

    @property
    def backend(self) -> str:
        return f"triton ensemble ({self.graphs})"

    @property
    def providers(self) -> list[str]:
        return [self.graphs]

    def score(self, inputs: dict[str, np.ndarray]) -> list:
        """One request's step outputs -> its DetectionResults."""
        maps = np.asarray(inputs[MODEL_MAP], np.float32)
        scores = np.asarray(inputs[MODEL_SCORE], np.float32).reshape(-1)
        if self.fusion is not None:
            fnn = (np.asarray(inputs[FNN_MAP], np.float32), np.asarray(inputs[FNN_SCORE], np.float32).reshape(-1))
            maps, scores = self.fusion(fnn, maps, scores)
        sizes = [tuple(int(v) for v in size) for size in np.asarray(inputs[IMAGE_SIZE]).reshape(-1, 2)]
        return self.postprocess(maps, scores, sizes)


class EnsemblePostprocess:
    """Model-size maps and prompt scores -> the serving contract's outputs (tensors.py)."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's stub

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        folder = _model_folder(args)
        self.scoring = GraphlessScoring(folder, parameters[GRAPHS_PARAMETER])
        self.inputs = [entry["name"] for entry in config["input"]]
        self.record: dict[str, Any] = served_record(
            self.scoring, folder, parameters["ensemble"], parameters["precision"]
        )

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses = []
        for request in requests:
            inputs = {name: pb.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            outputs = reply_batch([Scored(result) for result in self.scoring.score(inputs)], self.record)
            tensors = [pb.Tensor(name, as_triton_tensor(array)) for name, array in outputs.items()]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self) -> None:
        self.scoring = None
