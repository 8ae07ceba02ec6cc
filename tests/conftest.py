"""Shared fixtures: one tiny random-weight bundle per session, the shared data set when present."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import BATTERY_WELD, write_image
from needs import (
    absence_message,
    in_ci,
    missing_optional_module,
    module_absence,
    require_module,
    require_program,
    require_torch_side,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on a model hub


def pytest_runtest_setup(item):
    """`needs_program(NAME...)`, `needs_module(NAME...)`, `torch_side`: skip, or fail under CI (tests/needs.py)."""
    for marker in item.iter_markers("needs_program"):
        for name in marker.args:
            require_program(name)
    for marker in item.iter_markers("needs_module"):
        for name in marker.args:
            require_module(name)
    if item.get_closest_marker("torch_side"):
        require_torch_side()


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A test module that imports an optional package at its top is skipped naming the extra (a
    runtime-only install has no torch), and under CI it fails with the same words."""
    report = yield
    missing = report.failed and isinstance(collector, pytest.Module) and missing_optional_module(str(report.longrepr))
    if missing:
        reason = absence_message(*module_absence(missing))
        report.outcome = "failed" if in_ci() else "skipped"
        report.longrepr = reason if in_ci() else (str(collector.path), 0, f"Skipped: {reason}")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """The same rule when a test itself imports an optional package that is absent (outside CI)."""
    report = yield
    error = call.excinfo
    imported = report.failed and error and error.errisinstance(ModuleNotFoundError)
    missing = imported and missing_optional_module(str(error.value))
    if missing and not in_ci():
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1], f"Skipped: {absence_message(*module_absence(missing))}")
    return report


def pytest_collection_modifyitems(config, items):
    """Mark every test that reads the shared data set `needs_data`; skip `gpu` tests without a GPU."""
    has_gpu = shutil.which("nvidia-smi") is not None
    for item in items:
        if "battery_weld" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="no NVIDIA GPU on this machine"))


@pytest.fixture(autouse=True)
def _no_station_left_running():
    """A test that fails before it stops its `watch` subprocess must not leave it running (a looping
    station would burn a core for the rest of the suite)."""
    yield
    from station_helpers import STARTED

    for process in STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()
    STARTED.clear()


def _running_non_daemon_threads() -> list[threading.Thread]:
    """Threads the interpreter would wait for at exit. An executor's idle workers are not among
    them: concurrent.futures wakes and ends them at exit (they are in its registry)."""
    from concurrent.futures.thread import _threads_queues

    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive() and t not in _threads_queues
    ]


def _still_running(threads: list[threading.Thread], grace_s: float = 10.0) -> list[str]:
    """The names of those threads that do not end within a bounded wait (an executor's worker
    ends on its own shortly after its loop closes; an event loop nobody stopped never does)."""
    for thread in threads:
        thread.join(timeout=grace_s)
    return [thread.name for thread in threads if thread.is_alive()]


def pytest_sessionfinish(session, exitstatus):
    """A thread left by a session fixture would make the interpreter wait forever after the report:
    name it and fail instead (`pytest_unconfigure` then exits without waiting for it)."""
    stuck = _still_running(_running_non_daemon_threads())
    if stuck:
        session.config._zsad_stuck_threads = stuck
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    stuck = getattr(config, "_zsad_stuck_threads", None)
    if stuck:
        print(f"\nerror: non-daemon threads still running after the suite (the process could not exit): {stuck}")
        os._exit(int(pytest.ExitCode.TESTS_FAILED))


@pytest.fixture(autouse=True)
def _no_thread_left_running():
    """A non-daemon thread that outlives its test keeps the interpreter from ever exiting: the suite
    would report its results and then hang until CI's time runs out. Fail the test that left it
    (after giving it a bounded chance to finish) instead."""
    before = set(threading.enumerate())
    yield
    stuck = _still_running([t for t in _running_non_daemon_threads() if t not in before])
    assert not stuck, f"non-daemon threads left running (the process could not exit): {stuck}"


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory):
    """A zsad-tiny-vit APRIL-GAN bundle (random CLIP and heads) plus its torch modules."""
    require_torch_side()
    from zsad_edge.export.build import build_bundle
    from zsad_edge.export.demo import demo_config

    warnings.filterwarnings("ignore")
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    return build_bundle(demo_config(tmp_path_factory.mktemp("bundles") / "tiny", overwrite=False))


def _flagging(bundle: Path) -> Path:
    """Every image flagged: the image threshold set below any score."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["scoring"]["image_threshold"] = -1e9
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.fixture(scope="session")
def flagging_bundle(tiny_built, tmp_path_factory):
    """A copy of the tiny bundle whose image threshold flags every frame (every frame reaches the
    anomaly sinks)."""
    bundle = tmp_path_factory.mktemp("flagging") / "bundle"
    shutil.copytree(tiny_built.path, bundle)
    return _flagging(bundle)


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


@pytest.fixture(scope="session")
def method_bundles(tiny_built, tmp_path_factory):
    """One tiny random-weight bundle per method family, in folders named for the method."""
    from zsad_edge.export.build import BuildConfig, build_bundle
    from zsad_edge.export.models.clip import ClipSpec
    from zsad_edge.export.models.fnn import FnnTrainConfig, RandomWordConfig
    from zsad_edge.export.models.sam import SamSpec

    root = tmp_path_factory.mktemp("served")
    shutil.copytree(tiny_built.path, root / "aprilgan")
    clip = ClipSpec("zsad-tiny-vit", random_init=True, image_size=224)
    build_bundle(BuildConfig(clip=clip, method="sdp", out_dir=root / "sdp"))
    fnn = FnnTrainConfig(epochs=2, words=RandomWordConfig(pairs=100))
    build_bundle(BuildConfig(clip=clip, method="fnn", out_dir=root / "fnn", gaussian_sigma=4.0, fnn=fnn))
    build_bundle(BuildConfig(clip=clip, method="sdp", out_dir=root / "clipsam", sam=SamSpec("litemedsam")))
    _flagging(root / "clipsam")  # so CLIP-SAM refines every image
    return {name: root / name for name in ("aprilgan", "sdp", "fnn", "clipsam")}
