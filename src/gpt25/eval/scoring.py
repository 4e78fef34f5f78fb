"""Log-likelihood of the last tokens of many sequences in one padded forward pass.

Shared by HellaSwag (the ending given the context) and the lm-evaluation-harness adapter (any
continuation given any context). Sequences are right-padded with zeros: a causal model never looks
to the right, so the padding changes no scored position.
"""

from __future__ import annotations

import numpy as np
import torch

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
