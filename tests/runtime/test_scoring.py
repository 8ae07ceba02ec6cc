"""Image-score rules and Gaussian smoothing of the runtime, against hand formulas and scipy."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from zsad_edge.runtime.errors import BundleError
from zsad_edge.runtime.scoring import calibrated_ranges, score_rule
from zsad_edge.runtime.smoothing import gaussian_smooth

TEXT = np.array([0.2, 0.9, 0.5])
PEAK = np.array([1.0, 9.0, 3.0])
RANGES = {"text_score_range": [0.1, 0.6], "map_max_range": [1.0, 5.0]}


def test_prompt_rule_is_the_prompt_probability():
    np.testing.assert_allclose(score_rule("prompt").combine(TEXT, PEAK, RANGES), TEXT)


def test_few_shot_rule_averages_probability_and_normalised_peak():
    expected = 0.5 * (TEXT + (PEAK - 1.0) / 4.0)
    np.testing.assert_allclose(score_rule("prompt_and_map_mean").combine(TEXT, PEAK, RANGES), expected)


def test_sdp_rule_sums_both_normalised_parts_unclipped():
    expected = (TEXT - 0.1) / 0.5 + (PEAK - 1.0) / 4.0
    got = score_rule("normalised_sum").combine(TEXT, PEAK, RANGES)
    np.testing.assert_allclose(got, expected)
    assert got[1] > 2.0  # beyond the calibrated range: kept, not clipped, so defects stay ranked


def test_calibrated_ranges_and_unknown_rule():
    assert calibrated_ranges(TEXT, PEAK) == {"text_score_range": [0.2, 0.9], "map_max_range": [1.0, 9.0]}
    with pytest.raises(BundleError, match="unknown image score rule 'median'"):
        score_rule("median")


@pytest.mark.parametrize("shape, sigma", [((2, 240, 240), 8.0), ((1, 16, 20), 8.0), ((1, 37, 29), 2.5)])
def test_gaussian_smoothing_matches_scipy(rng, shape, sigma):
    """Including kernels wider than the map (radius 32 on 16 px): scipy's reflect border throughout."""
    maps = rng.standard_normal(shape).astype(np.float32)
    expected = np.stack([gaussian_filter(m, sigma) for m in maps])
    np.testing.assert_allclose(gaussian_smooth(maps, sigma), expected, atol=1e-6)
    assert gaussian_smooth(maps, 0.0) is maps
