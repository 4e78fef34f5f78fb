"""Validation loss, perplexity and bits per byte over a token array in fixed windows, the same number
every time (`evaluate_loss`; `evaluate_assistant_loss` for chat rows). Under torch.distributed every
rank must call them. Manual: docs/evaluation.md (Validation loss, perplexity, bits per byte).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from gpt25.eval.scoring import evaluating, padded_share, per_token_loss, rank_and_world_size, sum_over_ranks

Window = tuple[int, int]  # (start, number of predictions)


def token_byte_lengths(tokenizer, size: int) -> torch.Tensor:
    """(size,) int64: UTF-8 byte length of each token's text; 0 for special tokens and unused ids."""
    lengths = torch.zeros(size, dtype=torch.int64)
    for token_id, token in tokenizer.vocab.items():
        if token_id < size:
            lengths[token_id] = len(token)
    for special in tokenizer.special_tokens or []:
        lengths[tokenizer.token_id(special)] = 0
    return lengths


def window_batches(num_tokens: int, context_length: int, batch_size: int) -> list[list[Window]]:
    """Full windows grouped `batch_size` at a time, then the shorter remainder window on its own."""
    num_predictions = num_tokens - 1
    num_full = num_predictions // context_length
    batches = [
        [(index * context_length, context_length) for index in range(first, min(first + batch_size, num_full))]
        for first in range(0, num_full, batch_size)
    ]
    remainder = num_predictions - num_full * context_length
    if remainder:
        batches.append([(num_full * context_length, remainder)])
    return batches


def window_tensors(tokens: np.ndarray, windows: list[Window], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (len(windows), length) int64 on `device`."""
    rows = np.stack([np.asarray(tokens[start : start + length + 1], dtype=np.int64) for start, length in windows])
    rows_tensor = torch.from_numpy(rows).to(device)  # (batch, length + 1)
    return rows_tensor[:, :-1], rows_tensor[:, 1:]


def sums_over_batches(model: torch.nn.Module, batches: list, make_batch: Callable, score: Callable, num_sums: int, *,
                      device: torch.device | str, autocast_dtype: torch.dtype | None) -> list[float]:
    """The totals of `score(logits, targets)` ((num_sums,) float64) over every batch, all ranks together:
    each rank runs its share (every world_size-th batch) of `make_batch(batch)` -> (inputs, targets)."""
    rank, world_size = rank_and_world_size()
    autocast = (torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    sums = torch.zeros(num_sums, dtype=torch.float64, device=device)
    padding = batches[0] if batches else None
    with evaluating(model):
        for batch, is_padding in tqdm(padded_share(batches[rank::world_size], padding, device), desc="val loss",
                                      leave=False, disable=None if rank == 0 else True):
            inputs, targets = make_batch(batch)
            with autocast:
                logits = model(inputs)  # (batch, seq, vocab)
            if not is_padding:
                sums += score(logits, targets)
    return sum_over_ranks(sums.tolist(), device)


def evaluate_loss(model: torch.nn.Module, tokens: np.ndarray, tokenizer, *, batch_size: int, context_length: int,
                  device: torch.device | str, max_tokens: int | None = None,
                  autocast_dtype: torch.dtype | None = None) -> dict:
    """{"val_loss" (nats/token), "val_perplexity", "val_bpb" (None without a tokenizer), "tokens" (predictions
    scored)} over `tokens` (the whole array, or its first `max_tokens` predictions)."""
    if context_length > model.config.context_length:
        raise ValueError(f"context_length {context_length} is longer than the model's {model.config.context_length}")
    if max_tokens is not None:
        if max_tokens < 1:  # a negative slice end would drop tokens from the end instead
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to score, got {len(tokens)}; is the validation split empty?")
    size = max(model.config.vocab_size, tokenizer.vocab_size if tokenizer is not None else 0)
    byte_lengths = token_byte_lengths(tokenizer, size).to(device) if tokenizer is not None else None

    def score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """nats of all targets, nats of text targets, bytes of text targets, number of targets"""
        losses = per_token_loss(logits, targets).double()  # (batch, seq)
        target_bytes = byte_lengths[targets] if byte_lengths is not None else torch.zeros_like(targets)  # (batch, seq)
        return torch.stack([losses.sum(), (losses * (target_bytes > 0)).sum(), target_bytes.sum().double(),
                            losses.new_tensor(targets.numel())])

    nats, text_nats, text_bytes, num_targets = sums_over_batches(
        model, window_batches(len(tokens), context_length, batch_size),
        lambda windows: window_tensors(tokens, windows, device), score, 4, device=device, autocast_dtype=autocast_dtype)
    val_loss = nats / num_targets
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 700.0)),
            "val_bpb": text_nats / math.log(2) / text_bytes if byte_lengths is not None and text_bytes else None,
            "tokens": int(num_targets)}


def evaluate_assistant_loss(model: torch.nn.Module, rows, *, batch_size: int, device: torch.device | str,
                            max_rows: int | None = None, autocast_dtype: torch.dtype | None = None) -> dict:
    """{"val_loss" (nats per assistant token), "val_perplexity", "val_accuracy" (share of assistant tokens that
    are the top prediction), "tokens"} on the first `max_rows` packed conversation rows (PackedRows), as the
    GPT 2.5 project reports."""
    num_rows = len(rows) if max_rows is None else min(len(rows), max_rows)
    batches = [np.arange(first, min(first + batch_size, num_rows)) for first in range(0, num_rows, batch_size)]

    def score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """nats, correct predictions, assistant targets"""
        trained = targets >= 0  # (batch, seq); untrained targets hold a negative ignore index
        losses = per_token_loss(logits, targets.clamp(min=0)).double()  # (batch, seq)
        correct = (logits.argmax(dim=-1) == targets) & trained
        return torch.stack([(losses * trained).sum(), correct.sum().double(), trained.sum().double()])

    nats, num_correct, num_targets = sums_over_batches(model, batches, lambda batch: rows.batch(batch, device), score,
                                                       3, device=device, autocast_dtype=autocast_dtype)
    val_loss = nats / max(num_targets, 1)
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 700.0)),
            "val_accuracy": num_correct / max(num_targets, 1), "tokens": int(num_targets)}
