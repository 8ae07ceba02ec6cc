"""Scoring many stored images: in this process, or on a Ray cluster (`--ray`), with one per-image
step (`work`) that runs where the detector is, so both give the same files and numbers."""
