"""What a PyTorch user runs on the same machine, as the anchors every speed-up is measured against.

Four ways to run a bundle's own reference (rebuilt from its manifest, so the very same weights):
eager fp32; eager under `torch.autocast(bfloat16)` (one line, on CPUs with native bf16);
`torch.compile` (inductor) fp32; and compiled under autocast. Each runs in a process of its own,
so the runtime candidates are timed in a process that never loaded torch, as a station's is;
the parent drives every child one pass at a time, so anchors and runtime candidates still
interleave round by round, and only one process computes at any moment.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Sequence

import numpy as np

from zsad_edge.runtime.bench.timing import StageTimes
from zsad_edge.runtime.pipeline import DetectionResult

EAGER_FP32 = "torch_eager_fp32"
AUTOCAST_BF16 = "torch_autocast_bf16"
COMPILE_FP32 = "torch_compile_fp32"
COMPILE_BF16 = "torch_compile_autocast_bf16"
ANCHORS = (EAGER_FP32, AUTOCAST_BF16, COMPILE_FP32, COMPILE_BF16)
BF16_ANCHORS = (AUTOCAST_BF16, COMPILE_BF16)
COMPILED_ANCHORS = (COMPILE_FP32, COMPILE_BF16)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class AnchorFailed(Exception):
    """An anchor that could not be set up or run here (torch.compile without a compiler, say)."""

    anchor: str
    reason: str

    def __str__(self) -> str:
        return f"{self.anchor}: {self.reason}"


class TorchAnchor:
    """One anchor in its own process: times passes (`TimesItself`) and scores batches on request."""

    def __init__(self, bundle: Path, anchor: str) -> None:
        if anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {anchor!r}: one of {', '.join(ANCHORS)}")
        self.anchor = anchor
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited thread pools
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, str(bundle), anchor), daemon=True)
        self._process.start()
        child.close()
        self._answer()  # the reference is built (and compiled) before the first timed pass

    def time_stages(self, images: Sequence[np.ndarray], into: StageTimes | None) -> None:
        self._connection.send(("time", list(images)))
        samples = self._answer()
        if into is not None:
            for stage, value in samples.items():
                into.samples.setdefault(stage, []).append(value)

    def score_batch(self, images: Sequence) -> list[DetectionResult]:
        """Results of images (arrays or paths, read in the child)."""
        self._connection.send(("score", list(images)))
        return self._answer()

    def close(self) -> None:
        if self._process.is_alive():
            self._connection.send(("stop", None))
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()

    def _answer(self):
        try:
            kind, value = self._connection.recv()
        except EOFError:
            raise AnchorFailed(self.anchor, f"its process ended (exit code {self._process.exitcode})") from None
        if kind == "error":
            raise AnchorFailed(self.anchor, value)
        return value


def _serve(connection: Connection, bundle: str, anchor: str) -> None:
    """The child: build the anchor, say ready (or why not), then answer until told to stop."""
    from zsad_edge.runtime.bench.timing import time_stages

    _end_with_parent()
    try:
        detector = _anchor_detector(Path(bundle), anchor)
        detector.score_batch([np.zeros((64, 64, 3), np.uint8)])  # compiles where the anchor compiles
    except Exception as error:  # reported to the parent as one line, the run goes on without it
        connection.send(("error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"))
        return
    connection.send(("ready", None))
    while True:
        command, images = connection.recv()
        if command == "stop":
            return
        if command == "time":
            times = StageTimes()
            time_stages(detector, images, times)
            connection.send(("samples", {stage: values[0] for stage, values in times.samples.items()}))
        else:
            connection.send(("results", detector.score_batch(images)))


def _end_with_parent() -> None:
    """On Linux, have the kernel kill this child when its parent dies: a child left behind by a
    killed benchmark (torch.compile of a large model runs for minutes) would compute on the very
    cores the next benchmark times."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _anchor_detector(bundle: Path, anchor: str):
    import torch

    from zsad_edge.export.build import reference_from_bundle

    autocast = torch.bfloat16 if anchor in BF16_ANCHORS else None
    return sped_up_reference(reference_from_bundle(bundle), autocast, compiled=anchor in COMPILED_ANCHORS)


def sped_up_reference(reference, autocast, compiled: bool):
    """The reference as a PyTorch user speeds it up: its encoder and heads under autocast to
    `autocast` (a torch dtype, or None for fp32) on the reference's device, and/or through
    torch.compile. The modules inside are shared with `reference`'s other wrappers, not copied."""
    import torch

    from zsad_edge.export.references.autocast import Autocast

    if autocast is not None:
        reference.encoder = Autocast(reference.encoder, reference.device.type, autocast)
        reference.heads_module = Autocast(reference.heads_module, reference.device.type, autocast)
    if compiled:
        reference.encoder = torch.compile(reference.encoder)
        reference.heads_module = torch.compile(reference.heads_module)
    return reference
