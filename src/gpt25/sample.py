"""Text generation: temperature, top-k and nucleus (top-p) sampling with a preallocated KV cache.

`generate` is the text-in, text-out entry point (the `gpt25 generate` command and the demo's
samples); `generate_tokens` is the tensor loop underneath, shared with the lm-evaluation-harness
adapter and the speed benchmark. With the cache each new token costs one position of the model;
`use_cache=False` recomputes the whole prefix every step (the reference the cache is tested
against, and the baseline of `benchmarks/generate.py`). On a GPU the one-token step runs on a
`StaticKVCache` and is captured once in a CUDA graph, then replayed (`DecodeStep`; the caches and
the step live in `gpt25.inference`): a small model's step is bound by kernel launches there, not
by arithmetic.

Prompts and generated tokens must fit in the context together: a longer prompt is cut from the
left, with a warning. An empty prompt starts from the end-of-text token. Generation of a sample
stops at end-of-text (not part of the returned text) or after `max_new_tokens`.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpt25.inference import DecodeStep, KVCache, StaticKVCache

# Decoding's attention kernels leave out cuDNN's, PyTorch's first choice on H100s with a recent
# cuDNN: it builds a plan for every new key length, and decoding changes that every token or call.
DECODING_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def validate_sampling(temperature: float, top_p: float, top_k: int | None) -> None:
    """Raise ValueError for sampling settings outside their ranges."""
    if not 0 <= temperature < float("inf"):  # also refuses nan
        raise ValueError(f"temperature must be >= 0 and finite (0 means greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or left out to keep every token), got {top_k}")


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the `top_k` largest logits of each row (ties with the k-th are kept), the rest -> -inf."""
    if top_k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (batch, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)  # (batch, vocab)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked above it already reach top_p; the first always stays.
    probability_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = probability_before >= top_p
    drop = drop_sorted.scatter(-1, sorted_ids, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    top_p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick one token per row from `logits` (batch, vocab): argmax when temperature is 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    logits = apply_top_p(logits, top_p)
    probabilities = torch.softmax(logits, dim=-1)
    return torch.multinomial(probabilities, num_samples=1, generator=generator).squeeze(-1)  # (batch,)


@torch.inference_mode()
@sdpa_kernel(DECODING_ATTENTION_BACKENDS)
def generate_tokens(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    eos_id: int | None = None,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    static_decode: bool | None = None,
    on_step: Callable[[torch.Tensor], bool | None] | None = None,
) -> torch.Tensor:
    """Continue `prompt_ids` (batch, prompt_len) by up to `max_new_tokens`; returns (batch, generated).

    Stops early once every row has produced `eos_id` (rows that finished are then filled with
    `eos_id`); `eos_id=None` always runs `max_new_tokens` steps. Only ids below `vocab_size` (the
    tokenizer's, when the model's embedding is padded) are ever produced. `on_step` gets each
    step's tokens (batch,) and stops the generation by returning True. `static_decode` (default:
    on a CUDA device) decodes on a `StaticKVCache`, replaying a CUDA graph of the step on a GPU.
    Attention runs without cuDNN's kernel (DECODING_ATTENTION_BACKENDS).
    """
    validate_sampling(temperature, top_p, top_k)
    num_rows, prompt_len = prompt_ids.shape
    total_len = prompt_len + max_new_tokens
    context_length = model.config.context_length
    if prompt_len < 1 or total_len > context_length:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) must be between 1 and "
            f"the context length {context_length}; shorten the prompt or ask for fewer tokens"
        )
    vocab_size = vocab_size or model.config.vocab_size
    device = prompt_ids.device
    generated = torch.empty(num_rows, max_new_tokens, dtype=torch.long, device=device)
    if max_new_tokens == 0:
        return generated

    if use_cache:
        static_decode = device.type == "cuda" if static_decode is None else static_decode
        cache_type = StaticKVCache if static_decode else KVCache
        kv_cache = cache_type(model.config, num_rows, total_len, device, next(model.parameters()).dtype)
        logits = model(prompt_ids, kv_cache=kv_cache)[:, -1, :vocab_size]  # (batch, vocab)
        decode_step = DecodeStep(model, kv_cache, vocab_size, capture=static_decode and device.type == "cuda")
    else:
        sequence = torch.empty(num_rows, total_len, dtype=torch.long, device=device)
        sequence[:, :prompt_len] = prompt_ids
        logits = model(prompt_ids)[:, -1, :vocab_size]
    finished = torch.zeros(num_rows, dtype=torch.bool, device=device)

    for step in range(max_new_tokens):
        next_token = sample_next_token(
            logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )  # (batch,)
        if eos_id is not None:
            next_token = next_token.masked_fill(finished, eos_id)
            finished |= next_token == eos_id
        generated[:, step] = next_token
        if on_step is not None and on_step(next_token):
            break
        is_last = step == max_new_tokens - 1
        # .all() waits for the device; checking every 8 steps keeps the GPU queue full in between.
        if is_last or (eos_id is not None and step % 8 == 7 and bool(finished.all())):
            break
        if use_cache:
            logits = decode_step(next_token)
        else:
            end = prompt_len + step + 1
            sequence[:, end - 1] = next_token
            logits = model(sequence[:, :end])[:, -1, :vocab_size]
    return generated[:, : step + 1]


class _TextStream:
    """Turns each row's new token ids into text pieces, holding back incomplete UTF-8 characters."""

    def __init__(self, token_bytes: dict[int, bytes], num_rows: int, eos_id: int | None, on_token) -> None:
        self.token_bytes = token_bytes
        self.eos_id = eos_id
        self.on_token = on_token
        self.decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in range(num_rows)]
        self.finished = [False] * num_rows

    def __call__(self, next_token: torch.Tensor) -> None:
        for row, token_id in enumerate(next_token.tolist()):
            if self.finished[row]:
                continue
            if token_id == self.eos_id:
                self.finished[row] = True
                self._emit(row, self.decoders[row].decode(b"", final=True))
            else:
                self._emit(row, self.decoders[row].decode(self.token_bytes.get(token_id, b"")))

    def close(self) -> None:
        for row, decoder in enumerate(self.decoders):
            if not self.finished[row]:
                self._emit(row, decoder.decode(b"", final=True))

    def _emit(self, row: int, text: str) -> None:
        if text:
            self.on_token(row, text)


def encode_prompt(tokenizer, prompt: str, context_length: int, max_new_tokens: int) -> list[int]:
    """Prompt token ids, cut from the left (with a warning) so that prompt + new tokens fit the context."""
    if max_new_tokens >= context_length:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) must be below the model's context length ({context_length})"
        )
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
    validate_sampling(temperature, top_p, top_k)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    prompt_ids = encode_prompt(tokenizer, prompt, model.config.context_length, max_new_tokens)
    prompt_batch = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    eos_id = eot_id_or_none(tokenizer)
    stream = _TextStream(tokenizer.vocab, num_samples, eos_id, on_token) if on_token else None

    was_training = model.training
    model.eval()
    try:
        generated = generate_tokens(
            model,
            prompt_batch,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            vocab_size=tokenizer.vocab_size,
            generator=generator,
            use_cache=use_cache,
            static_decode=static_decode,
            on_step=stream,
        )
    finally:
        model.train(was_training)
    if stream is not None:
        stream.close()
    return [tokenizer.decode(cut_at_eos(row, eos_id)) for row in generated.tolist()]


def eot_id_or_none(tokenizer) -> int | None:
    """The tokenizer's end-of-text id, or None when it has no such special token."""
    try:
        return tokenizer.eot_id
    except ValueError:
        return None


def cut_at_eos(token_ids: list[int], eos_id: int | None) -> list[int]:
    """The ids before the first `eos_id`."""
    if eos_id is not None and eos_id in token_ids:
        return token_ids[: token_ids.index(eos_id)]
    return token_ids
