"""The tritonserver binary PyTriton ships, run on a model repository (`zsad-edge serve --repository`).

PyTriton's wheel holds Triton Inference Server with its python backend only (no onnxruntime or
TensorRT backend). Its python-backend stub comes per Python version beside the backend, so a
backend folder is assembled here (links, in a temporary folder) with this interpreter's stub.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from ..errors import ZsadEdgeError

LOG = logging.getLogger(__name__)
SERVE_EXTRA = "pip install 'zsad-edge[serve]'"
STUB = "triton_python_backend_stub"


def use_this_interpreters_libpython() -> None:
    """Make Triton's python-backend stub load this interpreter's libpython, not the system's.

    The stub links `libpython3.X.so.1.0` by name; where the distribution ships one too (Debian
    does), the dynamic loader picks that one, and a stub running another patch release's library
    against this interpreter's standard library fails to load the model (an AttributeError deep
    in multiprocessing). Putting this interpreter's library folder first fixes the lookup; the
    variable is inherited by tritonserver and the stubs it starts.
    """
    folder, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not folder or not library or not (Path(folder) / library).is_file():
        LOG.warning("this Python has no shared libpython (%s): the python backend uses the system's", library)
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != folder]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([folder, *paths])


def _distribution() -> tuple[Path, Path]:
    """PyTriton's tritonserver folder and its bundled libraries."""
    try:
        import pytriton
    except ImportError:
        raise ZsadEdgeError(f"running tritonserver needs NVIDIA PyTriton: {SERVE_EXTRA}") from None
    root = Path(pytriton.__file__).parent
    return root / "tritonserver", root.parent / "nvidia_pytriton.libs"


def backend_folder(into: Path) -> Path:
    """A backend folder for tritonserver: PyTriton's backends, the python one with this Python's stub."""
    dist, _ = _distribution()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / STUB
    if not stub.is_file():
        raise ZsadEdgeError(f"PyTriton has no python-backend stub for Python {version}; use a Python it supports")
    backends = into / "backends"
    python = backends / "python"
    python.mkdir(parents=True)
    for item in (dist / "backends" / "python").iterdir():
        (python / item.name).symlink_to(item)
    (python / STUB).symlink_to(stub)
    return backends


def start_tritonserver(repository: Path, workdir: Path, bind: str, ports: tuple[int, int, int]) -> subprocess.Popen:
    """Start tritonserver on a repository (HTTP, gRPC, metrics ports); its log goes to workdir/tritonserver.log."""
    dist, libs = _distribution()
    use_this_interpreters_libpython()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([env.get("LD_LIBRARY_PATH", ""), str(libs)]).strip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])  # the stub's Python
    http, grpc, metrics = ports
    command = [
        str(dist / "bin" / "tritonserver"),
        f"--model-repository={repository}",
        f"--backend-directory={backend_folder(workdir)}",
        f"--cache-directory={dist / 'caches'}",
        f"--http-address={bind}", f"--http-port={http}",
        f"--grpc-address={bind}", f"--grpc-port={grpc}",
        f"--metrics-address={bind}", f"--metrics-port={metrics}",
        "--allow-gpu-metrics=false",
        "--exit-timeout-secs=5",
        f"--log-file={workdir / 'tritonserver.log'}",
    ]  # fmt: skip
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
