"""Log-likelihood of the last tokens of many sequences in one padded forward pass.

Shared by HellaSwag (the ending given the context), CORE (each task's continuations) and the
lm-evaluation-harness adapter (any continuation given any context). Sequences are right-padded with zeros: a causal model never looks
to the right, so the padding changes no scored position.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from gpt25.eval.distributed import max_over_ranks
from gpt25.eval.loss import per_token_loss


def padded_batch(
    sequences: list[list[int]], num_scored: list[int], device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, scored mask), each (len(sequences), longest - 1); mask: the last num_scored targets."""
    width = max(len(token_ids) for token_ids in sequences) - 1
    inputs = np.zeros((len(sequences), width), dtype=np.int64)
    targets = np.zeros((len(sequences), width), dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=bool)
    for row, (token_ids, count) in enumerate(zip(sequences, num_scored, strict=True)):
        length = len(token_ids) - 1
        assert 0 <= count <= length, "score at most every predicted token"
        inputs[row, :length] = token_ids[:-1]
        targets[row, :length] = token_ids[1:]
        mask[row, length - count : length] = True
    return tuple(torch.from_numpy(array).to(device) for array in (inputs, targets, mask))


def score_sequences(
    model: torch.nn.Module, sequences: list[list[int]], num_scored: list[int], device
) -> tuple[list[float], list[bool]]:
    """For each sequence: summed log-likelihood (nats) of its last num_scored tokens, and whether
    greedy decoding would have produced exactly those tokens. Sequences must fit the context + 1."""
    inputs, targets, mask = padded_batch(sequences, num_scored, device)
    logits = model(inputs)  # (batch, seq, vocab)
    log_likelihoods = -per_token_loss(logits, targets)  # (batch, seq)
    sums = (log_likelihoods * mask).sum(dim=-1)  # (batch,)
    greedy = ((logits.argmax(dim=-1) == targets) | ~mask).all(dim=-1)  # (batch,)
    return sums.tolist(), greedy.tolist()


def score_rows(model, rows: list[tuple], *, batch_size: int, device, desc: str,
               show_progress: bool) -> tuple[list[float], list[bool]]:
    """score_sequences over rows whose last two items are (token ids, number scored), `batch_size`
    rows per forward; every rank runs the same number of forwards (FSDP needs matching ones)."""
    sums, greedy = [], []
    num_steps = max_over_ranks((len(rows) + batch_size - 1) // batch_size, device)
    for step in tqdm(range(num_steps), desc=desc, leave=False, disable=None if show_progress else True):
        batch = rows[step * batch_size : (step + 1) * batch_size]
        if not batch:
            # This rank is out of work: FSDP needs matching forwards, so run a dropped one.
            score_sequences(model, [[0, 0]], [1], device)
            continue
        batch_sums, batch_greedy = score_sequences(model, [row[-2] for row in batch], [row[-1] for row in batch],
                                                   device)
        sums.extend(batch_sums)
        greedy.extend(batch_greedy)
    return sums, greedy
