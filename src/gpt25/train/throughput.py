"""Peak FLOP/s for MFU: a table of dense bf16 tensor-core peaks for known GPUs, else a measured ceiling.

MFU = achieved model FLOP/s / peak FLOP/s of the hardware. For GPUs we know, the peak is the
vendor's dense (no sparsity) number for the compute dtype. For anything else (CPUs, unknown
GPUs) we time a large matmul in the compute dtype and use that as the ceiling, so MFU there
reads "fraction of what this machine's matmul reaches".
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import torch

# Dense bf16 tensor-core peak FLOP/s per device (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}
# fp32 training on these GPUs runs through TF32 tensor cores at half the bf16 rate.
FLOAT32_FRACTION = 0.5


def table_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The table's peak for a device name such as 'NVIDIA H100 80GB HBM3', or None if unknown."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key] * (1.0 if dtype == torch.bfloat16 else FLOAT32_FRACTION)
    return None


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of the fastest (size x size) @ (size x size) matmul among those run in `seconds`
    (at least two per layout): a ceiling for MFU, which a noisy moment on a shared machine must not lower.

    The layouts are those training runs: x @ W.t() (forward) and x.t() @ g (weight gradients). A plain
    bfloat16 x @ W takes a fallback some 20 times slower on CPUs without bf16 instructions; timed as
    the ceiling, it made bf16 MFU read over 100%.
    """
    left = torch.randn(size, size, device=device, dtype=dtype)
    right = torch.randn(size, size, device=device, dtype=dtype)
    products = (lambda: left @ right.t(), lambda: left.t() @ right)
    fastest = min(fastest_seconds(product, device, seconds / len(products)) for product in products)
    return 2 * size**3 / fastest


def fastest_seconds(product: Callable[[], torch.Tensor], device: torch.device, seconds: float) -> float:
    """The shortest time one call of `product` took among those run in `seconds` (at least two)."""
    product()  # warm-up: kernel selection, thread pool start
    fastest, count, start = math.inf, 0, time.perf_counter()
    while count < 2 or time.perf_counter() - start < seconds:
        began = time.perf_counter()
        product()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        fastest = min(fastest, time.perf_counter() - began)
        count += 1
    return fastest


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for MFU on this device (measured once per process)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak_flops(name, dtype)
        if peak is not None:
            return peak, f"table: {name}"
    return measure_matmul_flops(device, dtype), f"measured {dtype} matmul on {device.type}"
