"""`build_engines.py --target trt`: TensorRT engines for a bundle's precisions, built on this GPU.

For each requested precision (fp32, fp16, int8) the bundle's graphs at that precision (the
variant's image encoder, the fp32 heads) are checked to really carry it (Q/DQ nodes for int8, fp16
tensors for fp16, neither for fp32), then built into the engine cache beside the bundle. Before
any TensorRT import, the equivalent `trtexec` command lines are written there too, so a machine
without TensorRT's Python package still gets the exact build (JetPack ships trtexec).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from zsad_edge.calibration.precision import graph_precision_counts
from zsad_edge.runtime.backends.components import EngineOptions
from zsad_edge.runtime.backends.trt.engine import (
    BuildOptions,
    EngineCache,
    check_precision,
    current_device,
    default_cache_folder,
    load_or_build,
)
from zsad_edge.runtime.backends.trt.profiles import profile_shapes, shape_string
from zsad_edge.runtime.bundle import ComponentSpec, Manifest, load_manifest
from zsad_edge.runtime.errors import ZsadEdgeError
from zsad_edge.runtime.image_io import write_bytes_atomic

ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
TRTEXEC_SCRIPT = "trtexec_build.sh"


@dataclass(frozen=True)
class EngineJob:
    """One engine to build: a component of the bundle at the precision its ONNX carries."""

    component: str
    spec: ComponentSpec
    onnx: Path
    onnx_sha256: str  # over the graph and its weight files (Manifest.component_digest)

    @property
    def precision(self) -> str:
        return self.spec.precision


def check_engine_precisions(precisions: Sequence[str]) -> None:
    """Refuse precisions TensorRT does not build, before any export or calibration work."""
    for precision in precisions:
        if precision not in ENGINE_PRECISIONS:
            hint = (
                " (onnxruntime's CPU format; TensorRT takes the Q/DQ graph: int8)"
                if precision == "int8-dynamic"
                else ""
            )
            raise ZsadEdgeError(f"TensorRT engines come in {', '.join(ENGINE_PRECISIONS)}, not {precision!r}{hint}")


def engine_jobs(bundle_dir: Path, manifest: Manifest, precisions: Sequence[str]) -> list[EngineJob]:
    """The engines `precisions` need, each checked against its ONNX; shared fp32 graphs appear once."""
    import onnx

    check_engine_precisions(precisions)
    jobs: dict[tuple[str, str], EngineJob] = {}
    for precision in precisions:
        view = manifest.with_precision(precision)
        for name, spec in view.components.items():
            path = bundle_dir / spec.file
            if (name, spec.precision) not in jobs:
                counts = graph_precision_counts(onnx.load(str(path), load_external_data=False))
                check_precision(spec.precision, counts, spec.file)
                jobs[(name, spec.precision)] = EngineJob(name, spec, path, view.component_digest(name))
    return list(jobs.values())


def trtexec_commands(jobs: Sequence[EngineJob], options: EngineOptions, folder: Path) -> list[str]:
    """One trtexec line per engine: the same graph, profile, workspace and typing as the Python build."""
    lines = []
    for job in jobs:
        shapes = profile_shapes(job.spec.inputs, options.profile)
        args = [
            "trtexec",
            f"--onnx={job.onnx}",
            f"--saveEngine={folder / f'{job.component}.{job.precision}.engine'}",
            "--stronglyTyped",
            f"--memPoolSize=workspace:{int(options.workspace_gb * 1024)}M",
            f"--timingCacheFile={folder / 'timing.cache'}",
        ]
        args += [f"--{which}Shapes={shape_string(shapes, which)}" for which in ("min", "opt", "max") if shapes]
        lines.append(" ".join(shlex.quote(a) for a in args))
    return lines


def write_trtexec_script(jobs: Sequence[EngineJob], options: EngineOptions, cache: Path) -> Path:
    """`<cache>/trtexec_build.sh`; its engines go to `<cache>/trtexec/`, apart from the runtime's own
    (which carry a key record), for users who deploy with their own TensorRT tooling."""
    header = [
        "#!/bin/sh",
        "# TensorRT engines for this bundle, built with trtexec on the target GPU.",
        "# --stronglyTyped: precision comes from the ONNX (needed on TensorRT 10.x, the default on 11.x).",
        "set -e",
        f"mkdir -p {shlex.quote(str(cache / 'trtexec'))}",
    ]
    text = "\n".join(header + trtexec_commands(jobs, options, cache / "trtexec")) + "\n"
    path = cache / TRTEXEC_SCRIPT
    write_bytes_atomic(path, text.encode("utf-8"))
    path.chmod(0o755)
    return path


def build_trt_engines(bundle_dir: Path, precisions: Sequence[str], options: EngineOptions) -> list[dict]:
    """Write the trtexec script, then build (or reuse) every engine; returns one summary per engine."""
    bundle_dir = Path(bundle_dir).resolve()  # the trtexec script's paths work from any folder
    manifest = load_manifest(bundle_dir)
    jobs = engine_jobs(bundle_dir, manifest, precisions)
    cache_folder = Path(options.cache_folder or default_cache_folder(bundle_dir)).resolve()
    script = write_trtexec_script(jobs, options, cache_folder)
    try:
        device = current_device()
    except ZsadEdgeError as exc:
        raise type(exc)(f"{exc}. The equivalent trtexec commands are in {script}") from None
    cache = EngineCache(cache_folder)
    build = BuildOptions(options.profile, options.workspace_gb)
    summaries = []
    for job in jobs:
        loaded = load_or_build(job.component, bundle_dir, job.spec, job.onnx_sha256, cache, build, device)
        summaries.append(
            {
                "component": job.component,
                "precision": job.precision,
                "engine": str(cache.engine_path(loaded.key)),
                "gpu": device.gpu_name,
                "tensorrt": device.tensorrt_version,
            }
        )
    return summaries
