"""Validation loss, perplexity and bits per byte over a token array, the same number every time.

The tokens are cut into fixed, non-overlapping windows of `context_length` predictions: window i
reads tokens[i*L : i*L + L] and predicts tokens[i*L + 1 : i*L + L + 1]. The windows are batched in
order and a last, shorter window takes the remainder, so every token but the first is predicted
exactly once, with no sampling and no overlap.

Bits per byte is the one figure comparable across tokenizers:

    val_bpb = sum over text targets of loss_in_nats / ln(2)  /  sum over text targets of len(vocab[id])

where `len(vocab[id])` is the UTF-8 byte length of the text the token decodes to. Special tokens
(`<|endoftext|>` and friends) are markup, not text: as targets they count zero bytes and their
loss is left out of bpb (they still count in val_loss and perplexity, which are plain per-token
means). Under torch.distributed every rank must call this; windows are split across ranks and
the sums all-reduced.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from tqdm import tqdm

from gpt25.eval.distributed import max_over_ranks, rank_and_world_size, sum_over_ranks

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


def per_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in nats of each target: logits (batch, seq, vocab), targets (batch, seq) -> (batch, seq) fp32."""
    logits = logits.float()
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (batch, seq)
    return torch.logsumexp(logits, dim=-1) - target_logits


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


def evaluate_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    tokenizer,
    *,
    batch_size: int,
    context_length: int,
    device: torch.device | str,
    max_tokens: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Score `tokens` (the whole array, or its first `max_tokens` predictions) in fixed windows.

    Returns {"val_loss" (nats/token), "val_perplexity", "val_bpb" (None without a tokenizer),
    "tokens" (number of predictions scored)}.
    """
    if context_length > model.config.context_length:
        raise ValueError(
            f"context_length {context_length} is longer than the model's {model.config.context_length}"
        )
    if max_tokens is not None:
        if max_tokens < 1:  # a negative slice end would drop tokens from the end instead
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        tokens = tokens[: max_tokens + 1]
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to score, got {len(tokens)}; is the validation split empty?")
    size = max(model.config.vocab_size, tokenizer.vocab_size if tokenizer is not None else 0)
    byte_lengths = token_byte_lengths(tokenizer, size).to(device) if tokenizer is not None else None

    batches = window_batches(len(tokens), context_length, batch_size)
    rank, world_size = rank_and_world_size()
    my_batches = batches[rank::world_size]
    num_steps = max_over_ranks(len(my_batches), device)
    # nats of all targets, nats of text targets, bytes of text targets, number of targets
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    autocast = (
        torch.autocast(torch.device(device).type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for step in tqdm(range(num_steps), desc="val loss", leave=False, disable=None if rank == 0 else True):
                # Ranks out of work run a padding forward on batch 0 (FSDP needs matching calls) and drop it.
                is_padding = step >= len(my_batches)
                inputs, targets = window_tensors(tokens, batches[0] if is_padding else my_batches[step], device)
                with autocast:
                    logits = model(inputs)  # (batch, seq, vocab)
                if is_padding:
                    continue
                losses = per_token_loss(logits, targets).double()  # (batch, seq)
                sums[0] += losses.sum()
                sums[3] += targets.numel()
                if byte_lengths is not None:
                    target_bytes = byte_lengths[targets]  # (batch, seq)
                    sums[1] += (losses * (target_bytes > 0)).sum()
                    sums[2] += target_bytes.sum()
    finally:
        model.train(was_training)
    nats, text_nats, text_bytes, num_targets = sum_over_ranks(sums.tolist(), device)
    val_loss = nats / num_targets
    return {
        "val_loss": val_loss,
        "val_perplexity": math.exp(min(val_loss, 700.0)),
        "val_bpb": text_nats / math.log(2) / text_bytes if byte_lengths is not None and text_bytes else None,
        "tokens": int(num_targets),
    }


def evaluate_assistant_loss(
    model: torch.nn.Module,
    rows,
    *,
    batch_size: int,
    device: torch.device | str,
    max_rows: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Loss and mean token accuracy on the trained (assistant) targets of packed conversation rows
    (`gpt25.data.conversations.PackedRows`, the first `max_rows` of them), as the GPT 2.5 project reports.

    Returns {"val_loss" (nats per assistant token), "val_perplexity", "val_accuracy" (share of assistant
    tokens that are the model's top prediction), "tokens" (assistant tokens scored)}.
    """
    num_rows = len(rows) if max_rows is None else min(len(rows), max_rows)
    batches = [np.arange(first, min(first + batch_size, num_rows)) for first in range(0, num_rows, batch_size)]
    rank, world_size = rank_and_world_size()
    my_batches = batches[rank::world_size]
    num_steps = max_over_ranks(len(my_batches), device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, correct predictions, assistant targets
    autocast = (torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for step in range(num_steps):
                is_padding = step >= len(my_batches)  # FSDP needs the same forwards on every rank
                inputs, targets = rows.batch(batches[0] if is_padding else my_batches[step], device)
                with autocast:
                    logits = model(inputs)  # (batch, seq, vocab)
                if is_padding:
                    continue
                trained = targets >= 0  # (batch, seq); untrained targets hold a negative ignore index
                losses = per_token_loss(logits, targets.clamp(min=0)).double()  # (batch, seq)
                correct = (logits.argmax(dim=-1) == targets) & trained
                sums += torch.stack([(losses * trained).sum(), correct.sum().double(), trained.sum().double()])
    finally:
        model.train(was_training)
    nats, num_correct, num_targets = sum_over_ranks(sums.tolist(), device)
    val_loss = nats / max(num_targets, 1)
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 700.0)),
            "val_accuracy": num_correct / max(num_targets, 1), "tokens": int(num_targets)}
