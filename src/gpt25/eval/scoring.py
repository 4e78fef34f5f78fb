"""What every evaluation shares: per-token loss, the split of the work across ranks (each scores its
share, then the sums are all-reduced; no-ops in one process), and the log-likelihood of the last
tokens of many sequences in one padded forward pass (`score_rows`). Manual: docs/evaluation.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_ranks(values: list[float], device: torch.device | str, op: str = "sum") -> list[float]:
    """Element-wise sum (op "max": maximum) of `values` over all ranks (float64, so counts stay exact)."""
    if rank_and_world_size()[1] == 1:
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return totals.tolist()


def padded_share(mine: list, padding: Any, device: torch.device | str) -> list[tuple[Any, bool]]:
    """(item, False) for each of this rank's items, then (padding, True) until it has as many as the
    busiest rank: the caller runs those forwards too (FSDP needs matching ones) and drops their results."""
    busiest = int(sum_over_ranks([len(mine)], device, op="max")[0])
    return [(item, False) for item in mine] + [(padding, True)] * (busiest - len(mine))


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the model's own mode again after (the trainer's is training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def per_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in nats of each target: logits (batch, seq, vocab), targets (batch, seq) -> (batch, seq) fp32."""
    logits = logits.float()
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (batch, seq)
    return torch.logsumexp(logits, dim=-1) - target_logits


def padded_batch(sequences: list[list[int]], num_scored: list[int],
                 device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, scored mask), each (len(sequences), longest - 1); mask: the last num_scored targets."""
    # Right-padded with zeros: a causal model never looks to the right, so the padding changes no scored position.
    rows = torch.zeros(len(sequences), max(len(token_ids) for token_ids in sequences), dtype=torch.long)
    mask = torch.zeros(len(sequences), rows.shape[1] - 1, dtype=torch.bool)
    for row, (token_ids, count) in enumerate(zip(sequences, num_scored, strict=True)):
        length = len(token_ids) - 1  # predicted tokens
        assert 0 <= count <= length, "score at most every predicted token"
        rows[row, : length + 1] = torch.tensor(token_ids)
        mask[row, length - count : length] = True
    rows, mask = rows.to(device), mask.to(device)  # (batch, longest), (batch, longest - 1)
    return rows[:, :-1], rows[:, 1:], mask


def score_sequences(model: torch.nn.Module, sequences: list[list[int]], num_scored: list[int],
                    device) -> tuple[list[float], list[bool]]:
    """For each sequence: summed log-likelihood (nats) of its last num_scored tokens, and whether
    greedy decoding would have produced exactly those tokens. Sequences must fit the context + 1."""
    inputs, targets, mask = padded_batch(sequences, num_scored, device)
    logits = model(inputs)  # (batch, seq, vocab)
    log_likelihoods = -per_token_loss(logits, targets)  # (batch, seq)
    sums = (log_likelihoods * mask).sum(dim=-1)  # (batch,)
    greedy = ((logits.argmax(dim=-1) == targets) | ~mask).all(dim=-1)  # (batch,)
    return sums.tolist(), greedy.tolist()


def score_rows(model: torch.nn.Module, rows: list[tuple], *, batch_size: int, device, desc: str,
               show_progress: bool) -> tuple[list[float], list[bool]]:
    """score_sequences in eval mode over rows ending in (token ids, number scored), results in the rows' order.
    Every rank must call it: each runs as many forwards as the busiest one."""
    # Longest first: less padding, and an out-of-memory error shows at once.
    order = sorted(range(len(rows)), key=lambda index: -len(rows[index][-2]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    sums, greedy = [0.0] * len(rows), [False] * len(rows)
    with evaluating(model):
        for batch, is_padding in tqdm(padded_share(batches, [], device), desc=desc, leave=False,
                                      disable=None if show_progress else True):
            if is_padding:
                score_sequences(model, [[0, 0]], [1], device)
                continue
            batch_sums, batch_greedy = score_sequences(model, [rows[index][-2] for index in batch],
                                                       [rows[index][-1] for index in batch], device)
            for index, total, exact in zip(batch, batch_sums, batch_greedy, strict=True):
                sums[index], greedy[index] = total, exact
    return sums, greedy
