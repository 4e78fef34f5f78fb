"""Peak FLOP/s for MFU: a table of dense bf16 tensor-core peaks for known GPUs, else a measured matmul ceiling.

Manual: docs/training.md ("MFU")
"""

from __future__ import annotations

import math
import time

import torch

# Dense bf16 tensor-core peak FLOP/s per device (vendor datasheets, without sparsity), matched as substrings of
# the device name, longest first: "H100" is then the SXM part, "H200" covers GH200 and "A10" the A10G.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
}
# fp32 training on these GPUs runs through TF32 tensor cores at half the bf16 rate.
FLOAT32_FRACTION = 0.5


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of the fastest (size x size) @ (size x size) matmul run in `seconds` (at least two per layout): the
    best, not the mean, as a noisy moment on a shared machine must not lower the MFU ceiling."""
    left = torch.randn(size, size, device=device, dtype=dtype)
    right = torch.randn(size, size, device=device, dtype=dtype)
    fastest = math.inf
    # The layouts training runs, x @ W.t() (forward) and x.t() @ g (weight gradients): a plain bfloat16 x @ W takes a
    # fallback some 20 times slower on CPUs without bf16 instructions; timed as the ceiling, it made MFU read over 100%.
    for product in (lambda: left @ right.t(), lambda: left.t() @ right):
        product()  # warm-up: kernel selection, thread pool start
        count, start = 0, time.perf_counter()
        while count < 2 or time.perf_counter() - start < seconds / 2:
            began = time.perf_counter()
            product()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            fastest = min(fastest, time.perf_counter() - began)
            count += 1
    return 2 * size**3 / fastest


MEASURED_PEAKS: dict[tuple[torch.device, torch.dtype], float] = {}  # this process's measured ceilings


def peak_flops(device: torch.device, dtype: torch.dtype, beaten_by: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for MFU on this device. A ceiling is measured once per process, and again
    when training beats it (`beaten_by` FLOP/s): it was measured while other work took the cores."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""  # e.g. 'NVIDIA H100 80GB HBM3'
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_FLOPS[key] * (1.0 if dtype == torch.bfloat16 else FLOAT32_FRACTION), f"table: {name}"
    if MEASURED_PEAKS.get((device, dtype), 0.0) <= beaten_by:
        MEASURED_PEAKS[device, dtype] = max(measure_matmul_flops(device, dtype), beaten_by)
    return MEASURED_PEAKS[device, dtype], f"measured {dtype} matmul on {device.type}"
