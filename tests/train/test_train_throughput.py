"""The measured matmul ceiling that MFU divides by on CPUs and unknown GPUs."""

from __future__ import annotations

import time

import pytest
import torch

from gpt25.train import throughput
from gpt25.train.throughput import measure_matmul_flops, peak_flops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measured_ceiling_bounds_the_models_own_matmul(dtype: torch.dtype) -> None:
    """The ceiling times the product the model's linear layers run (x @ W.T): on CPUs without bf16
    instructions, a bf16 x @ W takes a fallback some 20 times slower, and MFU then read 79-154%."""
    size = 1024
    x, weight = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    x @ weight.t()  # warm-up
    fastest = min(timed(lambda: x @ weight.t()) for _ in range(3))
    ceiling = measure_matmul_flops(torch.device("cpu"), dtype, size=size, seconds=0.1)
    assert ceiling >= 0.5 * 2 * size**3 / fastest  # a ceiling, with room for a noisy shared machine


def timed(work) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def test_a_ceiling_is_measured_once_and_again_only_when_training_beats_it(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = iter([5e9, 8e9, 6e9])
    monkeypatch.setattr(throughput, "MEASURED_PEAKS", {})
    monkeypatch.setattr(throughput, "measure_matmul_flops", lambda device, dtype: next(measured))
    cpu = torch.device("cpu")
    assert peak_flops(cpu, torch.float32) == (5e9, "measured torch.float32 matmul on cpu")
    assert peak_flops(cpu, torch.float32, beaten_by=4e9)[0] == 5e9  # not beaten: kept, not measured
    assert peak_flops(cpu, torch.float32, beaten_by=7e9)[0] == 8e9  # beaten: measured again
    assert peak_flops(cpu, torch.float32, beaten_by=9e9)[0] == 9e9  # measured 6e9: at least what training reached
    assert peak_flops(cpu, torch.float32)[0] == 9e9  # later runs in the process start from it
