"""A chat model's reply to a conversation, whole (`chat`) or streamed as text pieces (`stream_chat`), and the
history kept inside the context (`trim_history`). Manual: docs/chat.md (Talking to a chat model)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from gpt25.checkpoint import check_tokenizer_matches
from gpt25.engine import TextStream, check_fits, decode, seeded_generator, validate_sampling
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import message_problem, render_prompt, reply_stop_ids, require_chat_tokens

DEFAULT_MAX_NEW_TOKENS = 256  # a reply's length limit unless one is given (or half the context, when less)


def trim_history(tokenizer: Tokenizer, messages: Sequence[dict], context_length: int,
                 max_new_tokens: int | None) -> tuple[list[dict], int]:
    """(the newest messages that leave room for `max_new_tokens` in the context, how many were dropped).
    A leading system message and the last message always stay (ValueError when even they do not fit); the
    kept history never starts with an assistant's reply."""
    max_new_tokens = reply_budget(max_new_tokens, context_length)
    messages = list(messages)
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    room = context_length - max_new_tokens
    while (prompt_length := len(render_prompt(tokenizer, system + turns))) > room:
        if len(turns) <= 1:
            check_fits(prompt_length, max_new_tokens, context_length)
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns = turns[1:]
    return system + turns, len(messages) - len(system) - len(turns)


def reply_budget(max_new_tokens: int | None, context_length: int) -> int:
    """`max_new_tokens`, checked to leave room for a prompt in the context (ValueError, one line, if not);
    None gives DEFAULT_MAX_NEW_TOKENS, or half the context when that is less."""
    if max_new_tokens is None:
        return min(DEFAULT_MAX_NEW_TOKENS, context_length // 2)
    check_fits(1, max_new_tokens, context_length)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    return max_new_tokens


def stream_chat(model: torch.nn.Module, tokenizer: Tokenizer, messages: Sequence[dict], *,
                max_new_tokens: int | None = None, temperature: float = 0.8, top_p: float = 0.9,
                top_k: int | None = None, seed: int | None = None, static_decode: bool | None = None) -> Iterator[str]:
    """The reply to `messages` ({"role", "content"} dicts) in text pieces as it is generated. Bad arguments, or a
    model without chat role tokens, raise ValueError here, before any token is generated."""
    validate_sampling(temperature, top_p, top_k)
    max_new_tokens = reply_budget(max_new_tokens, model.config.context_length)
    prompt_ids = _prompt_ids(model, tokenizer, messages, max_new_tokens)
    device = next(model.parameters()).device
    steps = decode(
        model, torch.tensor([prompt_ids], device=device), max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, vocab_size=tokenizer.vocab_size, generator=seeded_generator(device, seed),
        static_decode=static_decode,
    )
    return _reply_text(steps, TextStream(tokenizer.vocab, set(reply_stop_ids(tokenizer))))


def _reply_text(steps: Iterator[torch.Tensor], stream: TextStream) -> Iterator[str]:
    for token in steps:
        if piece := stream.push(int(token)):
            yield piece
        if stream.stopped:
            return
    if tail := stream.close():  # the steps ended at max_new_tokens: an unfinished character as U+FFFD
        yield tail


def chat(model: torch.nn.Module, tokenizer: Tokenizer, messages: Sequence[dict], **settings: Any) -> str:
    return "".join(stream_chat(model, tokenizer, messages, **settings))


def _prompt_ids(model: torch.nn.Module, tokenizer: Tokenizer, messages: Sequence[dict], max_new_tokens: int) -> list[int]:
    require_chat_tokens(tokenizer)
    check_tokenizer_matches(tokenizer, model.config.vocab_size, None)
    if problem := message_problem(list(messages)):
        raise ValueError(f"cannot answer this conversation: {problem}")
    context_length = model.config.context_length
    kept, num_dropped = trim_history(tokenizer, messages, context_length, max_new_tokens)
    if num_dropped:
        warnings.warn(f"dropped the {num_dropped} oldest messages so the conversation fits the context of "
                      f"{context_length} tokens", stacklevel=3)
    return render_prompt(tokenizer, kept)
