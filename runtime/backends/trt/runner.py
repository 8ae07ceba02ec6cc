"""Running one bundle component as a TensorRT engine: the same interface as OrtComponent.

Tensors are bound by the names the manifest lists. Device buffers are allocated once, at the
profile's largest shapes, and reused for every frame; a call whose batch exceeds the profile is
run in profile-sized chunks. Copies and execution share one CUDA stream, synchronised before the
outputs are returned.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ...bundle import ComponentSpec
from .engine import EngineError, LoadedEngine, cuda_check, import_cudart, import_tensorrt
from .profiles import ProfileConfig, max_shape


def _stream_handle(stream) -> int:
    """The raw cudaStream_t that TensorRT's execute_async_v3 takes."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


class TrtComponent:
    """One engine with its execution context, stream and device buffers."""

    def __init__(self, name: str, loaded: LoadedEngine, spec: ComponentSpec, profile: ProfileConfig) -> None:
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        self.name = name
        self.engine = loaded.engine
        self._loaded = loaded  # keeps the TensorRT runtime alive as long as the engine
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for {name} (out of GPU memory?)")
        self.providers = [f"TensorRT {trt.__version__}"]
        self.input_shapes = {t.name: list(t.shape) for t in spec.inputs}
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs]
        self._dtypes = {
            t: np.dtype(trt.nptype(self.engine.get_tensor_dtype(t))) for t in [*self.input_names, *self.output_names]
        }
        self._max_batch = {
            t.name: profile.ranges[t.shape[0]][2] for t in spec.inputs if t.shape and isinstance(t.shape[0], str)
        }
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "stream creation")
        self._buffers: dict[str, int] = {}
        for tensor in [*spec.inputs, *spec.outputs]:
            nbytes = int(np.prod(max_shape(tensor, profile))) * self._dtypes[tensor.name].itemsize
            self._buffers[tensor.name] = cuda_check(cudart, cudart.cudaMalloc(nbytes), f"allocation for {tensor.name}")
            self.context.set_tensor_address(tensor.name, int(self._buffers[tensor.name]))

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine; returns outputs by name, like OrtComponent.run."""
        arrays = {name: np.ascontiguousarray(feeds[name], dtype=self._dtypes[name]) for name in self.input_names}
        leading = {len(arrays[name]) for name in self._max_batch}
        if len(leading) > 1:
            raise EngineError(f"{self.name}: inputs disagree on their batch size {sorted(leading)}")
        total = leading.pop() if leading else 1
        step = min(self._max_batch.values(), default=total)
        chunks = [
            self._run_once({n: a[i : i + step] if n in self._max_batch else a for n, a in arrays.items()})
            for i in range(0, total, step)
        ]
        return {name: np.concatenate([c[name] for c in chunks]) for name in self.output_names}

    def _run_once(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, stream = self._cudart, self._stream
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in arrays.items():
            if not self.context.set_input_shape(name, array.shape):
                raise EngineError(f"{self.name}: input {name} of shape {array.shape} is outside the engine's profile")
            cuda_check(
                cudart,
                cudart.cudaMemcpyAsync(self._buffers[name], array.ctypes.data, array.nbytes, to_device, stream),
                f"copy of {name} to the GPU",
            )
        if not self.context.execute_async_v3(_stream_handle(stream)):
            raise EngineError(f"TensorRT failed to run {self.name}")
        outputs = {}
        for name in self.output_names:
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name])
            cuda_check(
                cudart,
                cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name], out.nbytes, to_host, stream),
                f"copy of {name} from the GPU",
            )
            outputs[name] = out
        cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "stream synchronisation")
        return outputs

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the component is collected)."""
        for pointer in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers = {}
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        if getattr(self, "_buffers", None) is not None and hasattr(self, "_cudart"):
            self.close()
