"""The export side's method registry: one plug-in module per method, registered by decorator.

Adding a method: its `MethodSpec` in runtime/contract.py, one module here with an `ExportMethod`
subclass decorated with `@register`, imported at the bottom of this file, and its tests.
"""

from __future__ import annotations

from zsad_edge.runtime.contract import METHODS
from zsad_edge.runtime.errors import ModelLoadError

from .base import DATASET_FAMILIES, ExportMethod, MethodModules

EXPORT_METHODS: dict[str, ExportMethod] = {}


def register(cls: type[ExportMethod]) -> type[ExportMethod]:
    """Register a plug-in under its spec's `--method` value; the spec must be in the runtime contract."""
    if METHODS.get(cls.spec.name) is not cls.spec:
        raise ValueError(f"{cls.__name__}: register its MethodSpec with runtime.contract.register_method first")
    EXPORT_METHODS[cls.spec.option] = cls()
    return cls


def export_method(option: str) -> ExportMethod:
    """The plug-in a `--method` value names."""
    if option not in EXPORT_METHODS:
        raise ModelLoadError(f"unknown method {option!r}; choose one of {', '.join(EXPORT_METHODS)}")
    return EXPORT_METHODS[option]


def from_manifest(name: str) -> ExportMethod:
    """The plug-in that builds bundles whose manifest names method `name`."""
    for method in EXPORT_METHODS.values():
        if method.spec.name == name:
            return method
    known = ", ".join(m.spec.name for m in EXPORT_METHODS.values())
    raise ModelLoadError(f"bundle method {name!r} has no PyTorch reference here (known: {known})")


from . import aprilgan, fnn, sdp, sdpplus  # noqa: E402,F401  (each registers itself)

__all__ = [
    "DATASET_FAMILIES",
    "EXPORT_METHODS",
    "ExportMethod",
    "MethodModules",
    "export_method",
    "from_manifest",
    "register",
]
