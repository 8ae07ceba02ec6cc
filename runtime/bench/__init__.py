"""The latency gate (`zsad-edge bench`, `bench-compare`), runtime-only (no torch).

timing.py: per-stage timing in interleaved blocks (the benchmarks use it too); fingerprint.py: the
environment a number depends on; record.py: a bench run; statistics.py: the verdict on one metric;
compare.py: two records compared; report.py, plots.py: tables and PNGs; cold_start.py: load and
first-frame measurements in fresh processes.
"""
