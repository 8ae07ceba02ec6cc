"""INT8 and score calibration (not implemented yet: see issue 5 and issue 3)."""
