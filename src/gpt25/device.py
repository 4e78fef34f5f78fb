"""Where a model runs: `--device`, the name a user gives, checked against this machine (train, eval,
generate, lm-eval), and whether FSDP shards the model across devices (train, checkpoints)."""

from __future__ import annotations

import sys

import torch


def resolve_device(device: str | None = "auto", local_rank: int = 0) -> torch.device:
    """The torch.device `device` names on this machine, or a one-line ValueError saying what it has. "auto"
    (or None) is cuda when a GPU is visible, else cpu; a bare "cuda" is cuda:LOCAL_RANK (a GPU per process)."""
    num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device in (None, "auto"):
        device = "cuda" if num_gpus else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or auto")
    if resolved.type == "cpu":
        return resolved
    index = local_rank if resolved.index is None else resolved.index
    if index >= num_gpus:
        visible = f"only {num_gpus} CUDA GPU(s) are visible" if num_gpus else "no CUDA GPU is visible"
        choices = f"cpu or cuda:0..{num_gpus - 1}" if num_gpus else "cpu"
        raise ValueError(f"--device {device} was asked for but {visible}; use --device {choices}")
    return torch.device("cuda", index)


def is_fsdp(model: torch.nn.Module) -> bool:
    """Sharded by FSDP2 (which also casts parameters itself: no torch.autocast needed for bfloat16).
    Looked up without importing FSDP, which takes seconds: a sharded model has imported it."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)
