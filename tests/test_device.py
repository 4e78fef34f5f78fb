"""gpt25.device.resolve_device: --device checked against the GPUs this machine has."""

from __future__ import annotations

import pytest
import torch

from gpt25.device import resolve_device


def test_auto_and_cpu_without_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--device cuda was asked for but no CUDA GPU is visible; use --device cpu$"):
        resolve_device("cuda")


@pytest.mark.parametrize("device", ["foo", "meta", "mps", "cuda:x"])
def test_what_is_not_cpu_or_cuda_is_refused(device: str) -> None:
    with pytest.raises(ValueError, match=rf"^--device '{device}' is not a device; use cpu, cuda, cuda:N or auto$"):
        resolve_device(device)


def test_a_device_beyond_the_visible_gpus_names_them(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)  # one GPU per torchrun process
    with pytest.raises(ValueError, match=r"^--device cuda:2 was asked for but only 2 CUDA GPU\(s\) are visible; "
                                         r"use --device cpu or cuda:0..1$"):
        resolve_device("cuda:2")
