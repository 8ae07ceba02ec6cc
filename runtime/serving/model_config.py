"""Triton model configs as Triton's own ModelConfig protobuf (shipped by tritonclient[grpc]), so a
config.pbtxt is written and read back exactly as the server parses it."""

from __future__ import annotations

import numpy as np

from ..errors import ZsadEdgeError

REMOTE_EXTRA = "pip install 'zsad-edge[remote]'"
CONFIG_FILE = "config.pbtxt"
PROTO_TYPES = {np.float32: "TYPE_FP32", np.float16: "TYPE_FP16", np.bool_: "TYPE_BOOL", np.int32: "TYPE_INT32",
               np.int64: "TYPE_INT64", np.uint8: "TYPE_UINT8", np.bytes_: "TYPE_STRING"}  # fmt: skip
# tensor name -> (numpy dtype, per-request dims); np.bytes_ is Triton's TYPE_STRING
TensorTable = dict[str, tuple[type, tuple[int, ...]]]


def config_proto():
    """Triton's ModelConfig protobuf module."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ZsadEdgeError(f"writing a Triton repository needs tritonclient: {REMOTE_EXTRA}") from None
    return model_config_pb2


def proto_type(dtype: type) -> int:
    """Triton's DataType enum value for a numpy dtype."""
    return getattr(config_proto(), PROTO_TYPES[np.dtype(dtype).type])


def declare(collection, table: TensorTable, optional: bool = False) -> None:
    """Add a table's tensors to a config's input or output list."""
    for name, (dtype, dims) in table.items():
        entry = collection.add(name=name, data_type=proto_type(dtype))
        entry.dims.extend(dims)
        if optional:
            entry.optional = True


def python_model_config(
    name: str, options, inputs: TensorTable, outputs: TensorTable, optional_inputs: bool = False, gpu: bool = False
):
    """A python-backend model with dynamic batching and `options.instances` instances (on GPUs with `gpu`)."""
    proto = config_proto()
    config = proto.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch)
    declare(config.input, inputs, optional=optional_inputs)
    declare(config.output, outputs)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    kind = proto.ModelInstanceGroup.KIND_GPU if gpu else proto.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=options.instances)
    return config


def parse_config(text: str):
    """Parse config.pbtxt text as Triton does; unknown fields, bad enums and bad values refused."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, config_proto().ModelConfig())
    except text_format.ParseError as exc:
        raise ZsadEdgeError(f"invalid {CONFIG_FILE}: {exc}") from None


def config_text(config) -> str:
    """The config as config.pbtxt text, parsed back first (what Triton would refuse is refused here)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(config)
    parse_config(text)
    return text
