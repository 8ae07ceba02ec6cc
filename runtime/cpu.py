"""What this CPU can do that changes inference speed or int8 accuracy several-fold.

Read from /proc/cpuinfo where there is one (Linux, the stations' OS); elsewhere the model is the
platform's name and no flag is claimed, so nothing is assumed that cannot be checked.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

# Instruction sets that change CPU inference speed several-fold (int8 dot products, bf16, AMX).
SPEED_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "sve",
)
# int8 x int8 dot products accumulated in 32 bits: full-range 8-bit weights cannot saturate.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """The CPU model and which of SPEED_FLAGS it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = {f for line in lines if line.startswith(("flags", "Features")) for f in line.split(":", 1)[1].split()}
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model, tuple(flag for flag in SPEED_FLAGS if flag in flags)


def int8_dot_product() -> str | None:
    """The int8 dot-product instruction set this CPU has (VNNI, AMX, ARM dot product), or None: then
    int8 products go through saturating 16-bit pair sums (AVX2) and weights need 7 bits."""
    flags = cpu_info()[1]
    return next((flag for flag in INT8_DOT_PRODUCT_FLAGS if flag in flags), None)
