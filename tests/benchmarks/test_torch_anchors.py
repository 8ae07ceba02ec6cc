"""benchmarks/torch_anchors.py: the PyTorch anchors run in processes of their own, compute what the
reference computes, and are timed pass by pass beside the runtime's candidates."""

import numpy as np
import pytest

from zsad_edge.runtime.bench.timing import STAGES, TimesItself, benchmark_interleaved

pytestmark = pytest.mark.torch_side


def test_eager_and_autocast_anchors_score_like_the_reference_and_time_in_rounds(tiny_built, tiny_detector):
    from zsad_edge.benchmarks.torch_anchors import AUTOCAST_BF16, EAGER_FP32, TorchAnchor

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    expected = tiny_built.reference_detector().score_batch(images)
    anchors = {name: TorchAnchor(tiny_built.path, name) for name in (EAGER_FP32, AUTOCAST_BF16)}
    try:
        eager = anchors[EAGER_FP32].score_batch(images)
        for got, want in zip(eager, expected):
            scale = np.ptp(want.anomaly_map)
            assert np.max(np.abs(got.anomaly_map - want.anomaly_map)) <= 1e-5 * scale
            assert got.score == pytest.approx(want.score, abs=1e-6)
        for got, want in zip(anchors[AUTOCAST_BF16].score_batch(images), expected):
            assert np.corrcoef(got.anomaly_map.ravel(), want.anomaly_map.ravel())[0, 1] > 0.99
            assert not np.array_equal(got.anomaly_map, want.anomaly_map)  # bf16 really ran

        assert all(isinstance(anchor, TimesItself) for anchor in anchors.values())
        cases = {"runtime": (tiny_detector, images[:1]), **{n: (a, images[:1]) for n, a in anchors.items()}}
        times = benchmark_interleaved(cases, runs=3, warmup=1, block=2, settle_s=0)
    finally:
        for anchor in anchors.values():
            anchor.close()
    for name, stage_times in times.items():
        assert stage_times.count == 3, name
        assert set(stage_times.samples) == set(STAGES) - {"refine"}
        assert all(value > 0 for values in stage_times.samples.values() for value in values)


def test_an_anchor_that_cannot_start_says_why_in_one_line(tmp_path):
    from zsad_edge.benchmarks.torch_anchors import EAGER_FP32, AnchorFailed, TorchAnchor

    with pytest.raises(AnchorFailed) as failed:
        TorchAnchor(tmp_path / "no-bundle", EAGER_FP32)
    assert "no-bundle" in str(failed.value) and "\n" not in str(failed.value)
