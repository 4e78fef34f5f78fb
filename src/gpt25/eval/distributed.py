"""The few torch.distributed calls evaluation needs; every one is a no-op in a single process.

Under torchrun (and FSDP) each rank scores its share of the work, then the sums are all-reduced.
FSDP needs every rank to run the same number of forward passes, so ranks with less work pad with
forwards whose results they drop (`max_over_ranks` tells them how many).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_ranks(values: list[float], device: torch.device | str) -> list[float]:
    """Element-wise sum of `values` over all ranks (float64, so counts stay exact)."""
    if rank_and_world_size()[1] == 1:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return totals.tolist()


def max_over_ranks(value: int, device: torch.device | str) -> int:
    """The largest `value` any rank holds."""
    if rank_and_world_size()[1] == 1:
        return value
    largest = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return int(largest.item())
