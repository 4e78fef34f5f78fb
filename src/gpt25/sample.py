"""Text generation: `generate` samples continuations of a text prompt (`gpt25 generate`, the demo's samples)
through `gpt25.engine`'s decoding. Manual: docs/sampling.md."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from gpt25.engine import TextStream, check_fits, generate_tokens, seeded_generator


def encode_prompt(tokenizer, prompt: str, context_length: int, max_new_tokens: int) -> list[int]:
    """Prompt token ids, cut from the left (with a warning) so that prompt + new tokens fit the context."""
    check_fits(1, max_new_tokens, context_length)
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
    room = context_length - max_new_tokens
    if len(prompt_ids) > room:
        warnings.warn(
            f"prompt has {len(prompt_ids)} tokens but only {room} fit beside {max_new_tokens} new tokens "
            f"in the context of {context_length}; keeping its last {room} tokens",
            stacklevel=3,
        )
        prompt_ids = prompt_ids[-room:]
    return prompt_ids


def generate(model: torch.nn.Module, tokenizer, prompt: str, *, max_new_tokens: int = 50, temperature: float = 0.8,
             top_p: float = 0.9, top_k: int | None = None, num_samples: int = 1, seed: int | None = None,
             use_cache: bool = True, static_decode: bool | None = None,
             on_token: Callable[[int, str], None] | None = None) -> list[str]:
    """The new text of `num_samples` continuations of `prompt` (sampled as one batch), each stopped before
    end-of-text; `on_token(sample_index, text)` streams them as they are produced."""
    if num_samples < 1:  # the sampling settings are checked by `decode`
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = next(model.parameters()).device
    prompt_ids = encode_prompt(tokenizer, prompt, model.config.context_length, max_new_tokens)
    eos_id = eot_id_or_none(tokenizer)
    streams = [TextStream(tokenizer.vocab, {eos_id}) for _ in range(num_samples)]

    def stream(tokens: torch.Tensor) -> None:
        for row, token_id in enumerate(tokens.tolist()):
            if text := streams[row].push(token_id):
                on_token(row, text)

    generated = generate_tokens(
        model, torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device),
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
        vocab_size=tokenizer.vocab_size, generator=seeded_generator(device, seed), use_cache=use_cache,
        static_decode=static_decode, on_step=stream if on_token else None,
    )
    for row in range(num_samples if on_token else 0):
        if text := streams[row].close():
            on_token(row, text)
    return [tokenizer.decode(row[: row.index(eos_id)] if eos_id in row else row) for row in generated.tolist()]


def eot_id_or_none(tokenizer) -> int | None:
    try:
        return tokenizer.eot_id
    except ValueError:
        return None

