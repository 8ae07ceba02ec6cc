"""Shared fixtures: one tiny random-weight bundle per session, the shared data set when present."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import BATTERY_WELD, write_image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on a model hub


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads the shared data set `needs_data`; skip `gpu` tests without a GPU."""
    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        if "battery_weld" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU on this machine"))


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


@pytest.fixture(scope="session")
def normal_folder(tmp_path_factory) -> Path:
    """Smooth synthetic 'parts' with a little texture, varied enough to calibrate ranges."""
    folder = tmp_path_factory.mktemp("normal")
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:96, 0:128]
    for i in range(6):
        part = 120 + 60 * np.sin(xs / (9 + i)) * np.cos(ys / 13) + rng.normal(0, 6, xs.shape)
        write_image(folder / f"n{i}.png", np.clip(part, 0, 255).astype(np.uint8))
    return folder


@pytest.fixture
def quirky_set(tmp_path):
    """One category with every deviation the reader must tolerate."""
    root = tmp_path / "parts"
    rng = np.random.default_rng(0)
    part = lambda: (rng.random((40, 60)) * 255).astype(np.uint8)  # noqa: E731
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 15:30] = 255
    for i in range(3):
        write_image(root / "train" / "good" / f"t{i}.png", part())
        write_image(root / "test" / "good" / f"g{i}.png", part())
    write_image(root / "test" / "scratch" / "a+-1.png", part())
    write_image(root / "ground_truth" / "scratch" / "a+-1_mask.png", mask)  # MVTec naming
    write_image(root / "test" / "scratch" / "b.png", part())
    write_image(root / "ground_truth" / "scratch" / "b.png", mask)  # same-name mask
    write_image(root / "test" / "scratch" / "no_mask.png", part())  # defective without mask
    write_image(root / "test" / "scratch" / "wrong_size.png", part())
    write_image(root / "ground_truth" / "scratch" / "wrong_size.png", np.zeros((10, 10), np.uint8))
    write_image(root / "ground_truth" / "scratch" / "orphan.png", mask)  # mask without image
    (root / "test" / "scratch" / "corrupt.png").write_bytes(b"junk")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
