"""Stand-ins for the `tensorrt` and cuda-python modules, for machines without a GPU.

They implement only the calls zsad-edge makes, record what was asked (network flags, workspace,
profile shapes, timing cache), and behave like the real ones where it matters to our logic:
the parser reads the real ONNX (its Q/DQ and fp16 content become layers, so precision checks see
the graph's real precision), the "engine" runs that ONNX with onnxruntime on bytes copied through
fake device memory, and deserialization refuses bytes that are not an engine this fake built.
What they cannot show is TensorRT's own behaviour; README lists that as unverified.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx

from zsad_edge.calibration.precision import graph_precision_counts
from zsad_edge.runtime.backends.ort import OrtComponent

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


class _Logger:
    WARNING, ERROR = 2, 1

    def __init__(self, level: int) -> None:
        self.level = level


class _Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.layers: list[SimpleNamespace] = []
        self.onnx_path: str | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int):
        return self.layers[index]


def _layer(kind: str, dtype: str) -> SimpleNamespace:
    output = SimpleNamespace(dtype=dtype)
    return SimpleNamespace(type=kind, num_outputs=1, get_output=lambda i: output)


class _Parser:
    def __init__(self, network: _Network, logger) -> None:
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        counts = graph_precision_counts(onnx.load(path, load_external_data=False))
        self.network.onnx_path = path
        self.network.layers = (
            [_layer("quantize", "int8")] * counts["quantize"]
            + [_layer("dequantize", "float")] * counts["dequantize"]
            + [_layer("other", "half")] * counts["fp16_tensors"]
            + [_layer("other", "float")]
        )
        return True

    def get_error(self, index: int) -> str:
        return "no error"


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, low, opt, high) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"  # grows by one byte per build that used it


class _Config:
    def __init__(self) -> None:
        self.pools: dict = {}
        self.cleared: list = []
        self.profiles: list[_Profile] = []
        self.timing_cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pools[pool] = size

    def clear_flag(self, flag) -> None:
        self.cleared.append(flag)

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache:
        return self.timing_cache


class _Context:
    def __init__(self, engine: "_Engine") -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        self.outputs: dict[str, np.ndarray] = {}

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.profile[name] if name in self.engine.profile else (shape, shape, shape)
        self.shapes[name] = tuple(shape)
        return all(a <= s <= b for a, s, b in zip(low, shape, high))

    def get_tensor_shape(self, name: str) -> tuple:
        return self.outputs[name].shape

    def execute_async_v3(self, stream: int) -> bool:
        memory = self.engine.cudart.memory
        feeds = {}
        for name in self.engine.session.input_names:
            count = int(np.prod(self.shapes[name]))
            raw = bytes(memory[self.addresses[name]][: count * 4])
            feeds[name] = np.frombuffer(raw, np.float32).reshape(self.shapes[name])
        self.outputs = self.engine.session.run(feeds)
        for name, value in self.outputs.items():
            data = np.ascontiguousarray(value, np.float32).tobytes()
            memory[self.addresses[name]][: len(data)] = data
        return True


class _Engine:
    def __init__(self, record: dict, cudart: "FakeCudart") -> None:
        self.session = OrtComponent(Path(record["onnx"]), backend="cpu")
        self.names = [*self.session.input_names, *self.session.output_names]
        self.profile = {n: tuple(map(tuple, s)) for n, s in record["profile"].items()}
        self.cudart = cudart

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_dtype(self, name: str) -> str:
        return "float"

    def create_execution_context(self) -> _Context:
        return _Context(self)


def fake_tensorrt(cudart: "FakeCudart", version: str = "10.3.0") -> types.ModuleType:
    """A `tensorrt` module; `trt.builds` lists what every build was asked for."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.builds = []
    trt.Logger = _Logger
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = SimpleNamespace(TF32="tf32")
    trt.LayerType = SimpleNamespace(QUANTIZE="quantize", DEQUANTIZE="dequantize")
    trt.DataType = SimpleNamespace(HALF="half")
    trt.nptype = lambda dtype: np.float32
    trt.OnnxParser = _Parser

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int) -> _Network:
            return _Network(flags)

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: _Network, config: _Config) -> bytes:
            profile = config.profiles[0].shapes if config.profiles else {}
            trt.builds.append(
                {
                    "flags": network.flags,
                    "onnx": network.onnx_path,
                    "pools": config.pools,
                    "cleared": config.cleared,
                    "profile": profile,
                    "timing_cache_in": config.timing_cache.data,
                }
            )
            return ENGINE_MAGIC + json.dumps({"onnx": network.onnx_path, "profile": profile}).encode()

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes):
            if not data.startswith(ENGINE_MAGIC):
                return None
            return _Engine(json.loads(data[len(ENGINE_MAGIC) :]), cudart)

    trt.Builder, trt.Runtime = Builder, Runtime
    return trt


class FakeCudart(types.ModuleType):
    """cuda-python's runtime API over host memory: `memory` maps fake device pointers to bytes."""

    cudaError_t = SimpleNamespace(cudaSuccess=0)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")

    def __init__(self, gpus: int = 1) -> None:
        super().__init__("cudart")
        self.gpus = gpus
        self.memory: dict[int, bytearray] = {}
        self.allocations = 0
        self._pointers = itertools.count(4096, 4096)

    def cudaGetErrorString(self, error):
        return 0, b"fake CUDA error"

    def cudaGetDeviceCount(self):
        return (0, self.gpus) if self.gpus else (35, None)

    def cudaGetDeviceProperties(self, index: int):
        return 0, SimpleNamespace(name=b"Fake GPU", major=8, minor=7)

    def cudaMalloc(self, nbytes: int):
        pointer = next(self._pointers)
        self.memory[pointer] = bytearray(nbytes)
        self.allocations += 1
        return 0, pointer

    def cudaFree(self, pointer: int):
        self.memory.pop(pointer, None)
        return (0,)

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes: int, kind, stream):
        if kind == "h2d":
            self.memory[dst][:nbytes] = ctypes.string_at(src, nbytes)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:nbytes]), nbytes)
        return (0,)
