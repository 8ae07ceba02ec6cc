"""Comparing two outputs: one definition of each number, for every gate and test that compares.

The export parity gate (graph vs PyTorch), the precision drift gate (variant vs fp32) and the
parity tests all measure with these functions, so "relative error 1e-4" means one thing.
"""

from __future__ import annotations

import numpy as np


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference relative to the expected output's range.

    A constant expected output has no range: its magnitude (or 1e-12) stands in, so a wrong
    constant is still a large error rather than a division by zero.
    """
    expected = np.asarray(expected, dtype=np.float64)
    error = float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max())
    scale = float(np.ptp(expected)) or float(np.abs(expected).max())
    return error / max(scale, 1e-12)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two flattened arrays; 1.0 when both are constant (they agree)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0
    from scipy.stats import pearsonr  # scipy: the torch side and calibration only, not the station runtime

    return float(pearsonr(a, b).statistic)


def spearman(a, b) -> float:
    """Spearman rank correlation (ties averaged, as scipy does)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
