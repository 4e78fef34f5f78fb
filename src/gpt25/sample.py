"""Text generation: `generate` samples continuations of a text prompt (`gpt25 generate`, the demo's samples).

Decoding itself (the KV cache, the CUDA-graph step, temperature / top-k / top-p sampling, the
end-of-text stop, streamed text) is `gpt25.engine`'s; this module turns text into a prompt and
tokens back into text. A prompt too long for the context beside `max_new_tokens` is cut from
the left, with a warning. An empty prompt starts from the end-of-text token. A sample stops at
end-of-text (not part of the returned text) or after `max_new_tokens`.
"""

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


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_p: float = 0.9,
    top_k: int | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    use_cache: bool = True,
    static_decode: bool | None = None,
    on_token: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Sample `num_samples` continuations of `prompt` as one batch; returns the new text of each.

    The returned strings do not repeat the prompt and stop before end-of-text. `on_token(sample_index,
    text)` streams each sample's new text as it is produced (pieces join to the returned string).
    `seed` makes sampling reproducible; temperature 0 is greedy (and ignores top_k/top_p).
    `use_cache` and `static_decode` choose the decoding path, as in `generate_tokens`.
    """
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
    """The tokenizer's end-of-text id, or None when it has no such special token."""
    try:
        return tokenizer.eot_id
    except ValueError:
        return None

