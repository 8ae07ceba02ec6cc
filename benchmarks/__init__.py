"""Latency and parity benchmarks comparing the PyTorch reference with the runtime."""
