"""Calibration from normal images: score ranges and thresholds now, INT8 (issue 5) later."""
