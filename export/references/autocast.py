"""The reference under autocast: what a PyTorch user gets from one line (bf16 on CPUs with native
bf16, fp16 on NVIDIA GPUs)."""

from __future__ import annotations

import torch
from torch import nn


class Autocast(nn.Module):
    """Runs a module under autocast, as `with torch.autocast(device_type, dtype):` around the call
    would, and hands its outputs on as fp32 (the reference's later stages read them as numpy, which
    has no bf16)."""

    def __init__(self, inner: nn.Module, device_type: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.inner = inner
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast(self.device_type, dtype=self.dtype):
            outputs = self.inner(*inputs)
        return tuple(t.float() for t in outputs)
