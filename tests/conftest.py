"""Shared fixtures: one tiny random-weight bundle per session, the shared data set when present."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on a model hub
REPO_ROOT = Path(__file__).resolve().parents[1]
BATTERY_WELD = REPO_ROOT.parent / "shared" / "data" / "battery_weld"


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory):
    """A zsad-tiny-vit APRIL-GAN bundle (random CLIP and heads) plus its torch modules."""
    from zsad_edge.export.build import build_bundle
    from zsad_edge.export.demo import demo_config

    warnings.filterwarnings("ignore")
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    return build_bundle(demo_config(tmp_path_factory.mktemp("bundles") / "tiny", overwrite=False))


@pytest.fixture(scope="session")
def tiny_detector(tiny_built):
    from zsad_edge.runtime.detector import Detector

    return Detector.from_bundle(tiny_built.path, backend="cpu")


@pytest.fixture
def battery_weld() -> Path:
    if not BATTERY_WELD.is_dir():
        pytest.skip("../shared/data/battery_weld is absent")
    return BATTERY_WELD


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def relative_map_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs error relative to the reference map's range (the issue's parity measure)."""
    return float(np.abs(actual - expected).max() / max(np.ptp(expected), 1e-12))
