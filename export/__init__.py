"""Torch side: reference models, text-embedding precompute, ONNX export and bundle building."""
