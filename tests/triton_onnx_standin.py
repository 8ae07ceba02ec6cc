"""A stand-in for Triton's onnxruntime backend, which no installable tritonserver here carries.

Copied as `model.py` into an ensemble's graph models (their config switched from platform
onnxruntime_onnx to backend python, nothing else changed): it runs the same `model.onnx` with
onnxruntime under the generated config's inputs and outputs, and, as the real backend does, runs
the requests of a dynamic batch as one batch. Everything else the tests exercise is the real
thing: the configs, Triton's ensemble scheduler, the pre- and post-processing models.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        path = path / "model.onnx" if path.is_dir() else path
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [entry["name"] for entry in config["input"]]
        self.outputs = [entry["name"] for entry in config["output"]]

    def execute(self, requests):
        feeds = {name: [pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs}
        counts = [len(array) for array in feeds[self.inputs[0]]]
        results = self.session.run(self.outputs, {name: np.concatenate(arrays) for name, arrays in feeds.items()})
        bounds = np.cumsum([0, *counts])
        return [
            pb.InferenceResponse(
                [pb.Tensor(name, np.ascontiguousarray(out[a:b])) for name, out in zip(self.outputs, results)]
            )
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
