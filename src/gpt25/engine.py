"""The one place a token is produced: KV caches, prefill, the decoding step, sampling, stops and streamed text.

`decode` yields each step's tokens and `generate_tokens` collects them; `BatchKVCache` holds the
serving engine's rows (`gpt25.serve.engine`). The model knows nothing of decoding: its forward
takes a cache and asks it where the new tokens sit, what they attend to and where their keys and
values go. Manual: docs/sampling.md (the engine, CUDA graphs) and docs/serve.md (the batch cache).
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpt25.model import ModelConfig, causal_mask
from gpt25.model.layers import PRODUCTS

# Decoding's attention kernels leave out cuDNN's, PyTorch's first choice on H100s with a recent
# cuDNN: it builds a plan for every new key length, and decoding changes that every token or call.
DECODING_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
SPLIT_MAX_ROWS = 64  # on the CPU, decoding's products with at most this many rows are split over the threads


def split_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T (..., out_features), W's rows cut into one block per thread and multiplied as a batch (bmm)."""
    # A decoding step's product has few rows: memory-bound, and BLAS runs it on one core; a block per thread
    # spreads the weight reads over every core (1.25-1.48x faster on 2 idle cores, docs/sampling.md).
    rows = x.numel() // x.shape[-1]
    threads = torch.get_num_threads()
    out_features, in_features = weight.shape
    if torch.is_grad_enabled() or rows > SPLIT_MAX_ROWS or threads < 2 or out_features % threads:
        return torch.matmul(x, weight.t())
    x_columns = x.reshape(1, rows, in_features).transpose(1, 2).expand(threads, in_features, rows)
    blocks = weight.reshape(threads, out_features // threads, in_features)
    out = torch.bmm(blocks, x_columns)  # (threads, out_features / threads, rows)
    return out.permute(2, 0, 1).reshape(*x.shape[:-1], out_features)


@contextmanager
def decoding(device: torch.device) -> Iterator[None]:
    """What every decoding forward runs under: attention without cuDNN's kernel, and on the CPU `split_linear`."""
    previous = PRODUCTS.few_rows
    if device.type == "cpu":
        PRODUCTS.few_rows = split_linear
    try:
        with sdpa_kernel(DECODING_ATTENTION_BACKENDS):
            yield
    finally:
        PRODUCTS.few_rows = previous


def check_fits(prompt_len: int, max_new_tokens: int, context_length: int, name: str = "max_new_tokens") -> None:
    """ValueError (one line) unless a prompt of `prompt_len` tokens and `max_new_tokens` more fit the context;
    `name` is what the caller calls the number of new tokens."""
    if max_new_tokens < 0:
        raise ValueError(f"{name} must be >= 0, got {max_new_tokens}")
    if prompt_len < 1 or prompt_len + max_new_tokens > context_length:
        raise ValueError(f"the prompt ({prompt_len} tokens) + {name} ({max_new_tokens}) must fit the context "
                         f"of {context_length} tokens; shorten the prompt or ask for fewer tokens")


def validate_sampling(temperature: float, top_p: float, top_k: int | None) -> None:
    """Raise ValueError for sampling settings outside their ranges."""
    if not 0 <= temperature < float("inf"):  # also refuses nan
        raise ValueError(f"temperature must be >= 0 and finite (0 means greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or left out to keep every token), got {top_k}")


def seeded_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on `device` seeded with `seed`, or from the system's entropy when None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


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
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from `logits` (batch, vocab): argmax when temperature is 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probabilities = sampling_probabilities(logits, temperature, top_k, top_p)
    return race(probabilities, exponential_noise(probabilities, [generator]))  # (batch,)


def exponential_noise(probabilities: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Exp(1) draws shaped like `probabilities` (rows, vocab), row i's from generators[i] (a lone generator draws
    every row): the random numbers torch.multinomial draws for one sample."""
    rows_each = probabilities.shape[0] // len(generators)  # every row, or one
    if probabilities.device.type != "cpu":
        return torch.cat([torch.empty_like(part).exponential_(1.0, generator=generator)
                          for part, generator in zip(probabilities.split(rows_each), generators, strict=True)])
    # The CPU's exponential_ is -log1p(-u) of a float64 uniform u, taken one element at a time (~27 ns each, half a
    # 16-row serving step's sampling); the same uniforms from rand, transformed over the whole tensor, are the
    # same numbers (tests/sample/test_sampling.py) in half the time.
    uniform = torch.empty(probabilities.shape, dtype=torch.float64)
    for part, generator in zip(uniform.split(rows_each), generators, strict=True):
        torch.rand(part.shape, dtype=torch.float64, generator=generator, out=part)
    return uniform.neg_().log1p_().neg_().to(probabilities.dtype)


def race(probabilities: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(p / q), q ~ Exp(1): one draw from p, as torch.multinomial takes it (the Gumbel-max trick, exp applied)."""
    return (probabilities / noise).argmax(dim=-1)


def sampling_probabilities(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """(batch, vocab) the distribution sampling draws from: logits / temperature, cut by top-k and top-p."""
    logits = logits.float() / temperature
    if top_k is not None:
        logits = apply_top_k(logits, top_k)
    return torch.softmax(apply_top_p(logits, top_p), dim=-1)


def sample_rows(logits: torch.Tensor, settings: list[tuple[float, int | None, float]],
                generators: list[torch.Generator]) -> list[int]:
    """One token per row of `logits` (rows, vocab), each row with its own (temperature, top_k, top_p) and
    generator, drawing exactly as `sample_next_token` would alone; rows that share settings are filtered together."""
    tokens = [0] * len(settings)
    for temperature, top_k, top_p in set(settings):
        rows = [row for row, setting in enumerate(settings) if setting == (temperature, top_k, top_p)]
        chosen = logits if len(rows) == len(settings) else logits[rows]  # (len(rows), vocab)
        if temperature == 0:
            picked = chosen.argmax(dim=-1).tolist()
        else:
            probabilities = sampling_probabilities(chosen, temperature, top_k, top_p)
            # Each row's noise from its own generator: a seeded request gets the tokens `generate` gives it,
            # whatever else is in the batch (one draw over the rows would share one random stream).
            noise = exponential_noise(probabilities, [generators[row] for row in rows])  # (len(rows), vocab)
            picked = race(probabilities, noise).tolist()
        for row, token in zip(rows, picked, strict=True):
            tokens[row] = token
    return tokens


class TextStream:
    """Token ids in, text out: a character whose UTF-8 bytes span several tokens comes out with its last byte.

    A token of `stop_ids` ends the text (it adds none): what comes after it is ignored.
    """

    def __init__(self, token_bytes: dict[int, bytes], stop_ids: set[int | None] | frozenset[int] = frozenset()) -> None:
        self.token_bytes, self.stop_ids, self.stopped = token_bytes, stop_ids, False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text that `token_id` completes ("" when none, or after a stop)."""
        if self.stopped:
            return ""
        if token_id in self.stop_ids:
            self.stopped = True
            return self.close()
        return self.decoder.decode(self.token_bytes.get(token_id, b""))

    def close(self) -> str:
        """What is left: an unfinished character as U+FFFD."""
        return self.decoder.decode(b"", final=True)


class KVCache:
    """Preallocated per-layer keys and values, (batch, heads, max_seq_len, head_dim) each.

    `position` counts the positions filled so far; a forward writes [position, position + seq) and
    advances it. The attention asks the cache for the angles, keys/values and mask of its positions,
    so the caches below answer the same questions their own way.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_seq_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if not 0 < max_seq_len <= config.context_length:
            raise ValueError(f"max_seq_len={max_seq_len} must be in 1..context_length={config.context_length}")
        shape = (batch_size, config.num_heads, max_seq_len, config.d_model // config.num_heads)
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.position = 0
        self.qkv_weights: dict[int, torch.Tensor] = {}  # layer index -> (3 d_model, d_model)

    def reset(self) -> None:
        """Forget the cached sequence (the buffers are reused, not cleared) and the stacked weights."""
        self.position = 0
        self.qkv_weights.clear()

    def qkv_weight(self, layer_index: int, stack: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The layer's stacked q/k/v weight (3 d_model, d_model): made by `stack()` once, then kept (no autograd)."""
        if torch.is_grad_enabled():
            return stack()
        weight = self.qkv_weights.get(layer_index)
        if weight is None:
            weight = self.qkv_weights[layer_index] = stack()
        return weight

    def rotary_angles(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (seq, 1, 1, head_dim / 2) of positions [position, position + seq): rows of the tables."""
        end = self.position + seq_len
        return cos[self.position : end, None, None, :], sin[self.position : end, None, None, :]

    def token_positions(self, seq_len: int) -> torch.Tensor:
        """(seq,) the positions [position, position + seq) of the new tokens."""
        return torch.arange(self.position, self.position + seq_len, device=self.keys[0].device)

    def update(self, layer_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, heads, seq, head_dim) at [position, position + seq); return all keys/values so far."""
        end = self.position + k.shape[-2]
        self.keys[layer_index][:, :, self.position : end] = k
        self.values[layer_index][:, :, self.position : end] = v
        return self.keys[layer_index][:, :, :end], self.values[layer_index][:, :, :end]

    def attention_mask(self, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        """(boolean mask (seq, keys) or None, is_causal) for `seq` new queries over the keys `update` returned."""
        if self.position == 0 or seq_len == 1:
            # A fresh chunk is plainly causal; one new token may attend to everything cached.
            return None, self.position == 0
        return causal_mask(seq_len, self.position + seq_len, device=self.keys[0].device), False

    def select_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The last position's: (batch, 1, d_model), all a decoder reads."""
        return x[:, -1:]

    def advance(self, seq_len: int) -> None:
        """Count `seq_len` more positions as filled (called by the model after each forward)."""
        self.position += seq_len


class StaticKVCache(KVCache):
    """A KVCache whose one-token steps have fixed shapes and read their position from the device.

    A step writes at `position_tensor`, attends over the whole buffer under a mask of the filled
    positions and advances the tensor in place: the same kernels on the same memory every step, never
    asking the host where it is, as a CUDA graph needs (`DecodeStep`). The prompt takes KVCache's path.
    """

    def __init__(self, *args, **kwargs) -> None:
        """The arguments of KVCache."""
        super().__init__(*args, **kwargs)
        device = self.keys[0].device
        self.position_tensor = torch.zeros(1, dtype=torch.long, device=device)
        self.key_positions = torch.arange(self.max_seq_len, device=device)[None, :]  # (1, max_seq_len)

    def reset(self) -> None:
        super().reset()
        self.position_tensor.zero_()

    def set_position(self, position: int) -> None:
        """Move both counters to `position` (after a graph capture ran the step without meaning it)."""
        self.position = position
        self.position_tensor.fill_(position)

    def rotary_angles(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > 1:
            return super().rotary_angles(cos, sin, seq_len)
        cos = cos.index_select(0, self.position_tensor)  # (1, head_dim / 2)
        sin = sin.index_select(0, self.position_tensor)
        return cos[:, None, None, :], sin[:, None, None, :]

    def token_positions(self, seq_len: int) -> torch.Tensor:
        return super().token_positions(seq_len) if seq_len > 1 else self.position_tensor  # (1,), on the device

    def update(self, layer_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[-2] > 1:
            return super().update(layer_index, k, v)
        keys, values = self.keys[layer_index], self.values[layer_index]
        keys.index_copy_(2, self.position_tensor, k)
        values.index_copy_(2, self.position_tensor, v)
        return keys, values  # the whole buffers: (batch, heads, max_seq_len, head_dim)

    def attention_mask(self, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        if seq_len > 1:
            return super().attention_mask(seq_len)
        return self.key_positions <= self.position_tensor, False  # (1 query, max_seq_len keys): the filled ones

    def advance(self, seq_len: int) -> None:
        super().advance(seq_len)
        self.position_tensor += seq_len


class DecodeStep:
    """The one-token decoding step on a KV cache: logits (batch, vocab) after each new token.

    With `capture` (a CUDA device and a `StaticKVCache`) the step is captured in a CUDA graph on the
    first call and replayed after (one launch instead of one per kernel); if that fails, a warning
    says why and the steps run eagerly.
    """

    def __init__(self, model: torch.nn.Module, cache: KVCache, vocab_size: int, capture: bool) -> None:
        if capture and not isinstance(cache, StaticKVCache):
            raise ValueError("a captured decoding step needs a StaticKVCache (fixed shapes, position on the device)")
        self.model, self.cache, self.vocab_size, self.capture = model, cache, vocab_size, capture
        self.tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=cache.keys[0].device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_inputs: tuple[torch.Tensor, ...] = ()
        self.logits: torch.Tensor | None = None  # the graph's output, rewritten by every replay

    def __call__(self, next_token: torch.Tensor) -> torch.Tensor:
        """Feed `next_token` (batch,) at the cache's next position; return the logits (batch, vocab) after it."""
        if self.cache.position >= self.cache.max_seq_len:
            raise ValueError(f"the KV cache is full ({self.cache.max_seq_len} positions); reset it or make it longer")
        self.tokens.copy_(next_token[:, None])
        if self.capture and self.graph is None:
            self._capture_or_fall_back()
        if not self.capture:
            return self._run()
        self.graph.replay()
        self.cache.position += 1  # the graph advanced the cache's position_tensor
        return self.logits

    def _run(self) -> torch.Tensor:
        return self.model(self.tokens, kv_cache=self.cache)[:, -1, : self.vocab_size]  # (batch, vocab)

    def _capture_or_fall_back(self) -> None:
        """Capture the step; whether that works or not, leave the cache at the position it had."""
        position = self.cache.position
        try:
            self._capture(position)
        except RuntimeError as error:
            # A failure inside the capture surfaces when it ends; the error that caused it is the context.
            cause = f"{error}; caused by: {error.__context__}" if error.__context__ else str(error)
            warnings.warn(
                f"capturing the decoding step in a CUDA graph failed ({cause}); decoding eagerly instead "
                "(slower; `gpt25 generate --no_cuda_graph` or static_decode=False skips the attempt)",
                stacklevel=4,
            )
            self.capture, self.graph, self.logits, self.graph_inputs = False, None, None, ()
        # The warm-up wrote at `position` (the first step writes there again); capturing ran only the Python.
        self.cache.set_position(position)

    def _capture(self, position: int) -> None:
        """Warm up on a side stream (as CUDA graphs need), then capture one step at `position` on it."""
        with torch.cuda.device(self.tokens.device):
            side_stream = torch.cuda.Stream()
            side_stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side_stream):
                self._run()  # initialises what the step creates lazily (kernel plans, library workspaces)
            torch.cuda.current_stream().wait_stream(side_stream)
            self.cache.set_position(position)
            # The graph reads the stacked q/k/v weights by address: they must live as long as it does.
            self.graph_inputs = tuple(self.cache.qkv_weights.values())
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side_stream):
                self.logits = self._run()


@torch.inference_mode()  # entered anew at each resumption: the caller's code between steps runs without it
def decode(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    stop_ids: frozenset[int] = frozenset(),
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    static_decode: bool | None = None,
) -> Iterator[torch.Tensor]:
    """Continue `prompt_ids` (batch, prompt_len): yields each step's tokens (batch,), at most `max_new_tokens`.

    A row that produced one of `stop_ids` repeats that token; the steps end once every row has
    (checked every 8 steps on a batch: the check waits for the device). Only ids below
    `vocab_size` (the tokenizer's, when the model's embedding is padded) are produced.
    `use_cache=False` recomputes the whole prefix every step (the reference the cache is tested
    against). `static_decode` (default: on a CUDA device) decodes on a `StaticKVCache`, replaying a
    CUDA graph of the step on a GPU. Attention runs without cuDNN's kernel.
    """
    validate_sampling(temperature, top_p, top_k)
    num_rows, prompt_len = prompt_ids.shape
    check_fits(prompt_len, max_new_tokens, model.config.context_length)
    vocab_size = vocab_size or model.config.vocab_size
    device = prompt_ids.device
    if max_new_tokens == 0:
        return
    was_training = model.training
    model.eval()
    try:
        with decoding(device):
            if use_cache:
                static_decode = device.type == "cuda" if static_decode is None else static_decode
                cache = (StaticKVCache if static_decode else KVCache)(
                    model.config, num_rows, prompt_len + max_new_tokens, device, next(model.parameters()).dtype)
                logits = model(prompt_ids, kv_cache=cache)[:, -1, :vocab_size]  # (batch, vocab)
                step = DecodeStep(model, cache, vocab_size, capture=static_decode and device.type == "cuda")
            else:
                sequence = prompt_ids
                logits = model(sequence)[:, -1, :vocab_size]
        stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
        finished = torch.zeros(num_rows, dtype=torch.bool, device=device)
        last_token = torch.zeros(num_rows, dtype=torch.long, device=device)
        for index in range(max_new_tokens):
            next_token = sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                           generator=generator)  # (batch,)
            if stop_ids:
                # A finished row keeps repeating its stop token: the batch goes on as one tensor, with no
                # per-row bookkeeping on the host, and the caller cuts each row at its first stop.
                next_token = torch.where(finished, last_token, next_token)
                finished |= torch.isin(next_token, stops)
                last_token = next_token
            yield next_token
            if index == max_new_tokens - 1 or (stop_ids and index % 8 == 7 and bool(finished.all())):
                return
            with decoding(device):
                if use_cache:
                    logits = step(next_token)
                else:
                    sequence = torch.cat((sequence, next_token[:, None]), dim=1)
                    logits = model(sequence)[:, -1, :vocab_size]
    finally:
        model.train(was_training)


def generate_tokens(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    on_step: Callable[[torch.Tensor], bool | None] | None = None,
    **options,
) -> torch.Tensor:
    """`decode`'s tokens as one tensor (batch, generated), ending at `eos_id` in every row or `max_new_tokens`.

    Rows that finished are filled with `eos_id`. `on_step` gets each step's tokens (batch,) and
    stops the generation by returning True. `options` are `decode`'s.
    """
    steps = []
    stop_ids = frozenset() if eos_id is None else frozenset({eos_id})
    for next_token in decode(model, prompt_ids, max_new_tokens=max_new_tokens, stop_ids=stop_ids, **options):
        steps.append(next_token)
        if on_step is not None and on_step(next_token):
            break
    if not steps:
        return torch.empty(prompt_ids.shape[0], 0, dtype=torch.long, device=prompt_ids.device)
    return torch.stack(steps, dim=1)


class BatchKVCache(KVCache):
    """Keys and values of up to `max_rows` sequences of different lengths, padded to the context length.

    Slots [0, batch_size) are the active rows; `lengths[i]` counts the positions slot i holds.
    `prefill` adds prompts packed into sequences of at most the context length (`pack_prompts`), each
    token attending to its own prompt only, in one forward; `step` feeds one token per row at the
    row's own position, under a mask of its filled positions. A lone row takes `KVCache`'s plain path.
    """

    def __init__(self, config: ModelConfig, max_rows: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, max_rows, config.context_length, device, dtype)
        self.max_rows = max_rows
        self.batch_size = 0
        self.lengths = [0] * max_rows
        self.key_positions = torch.arange(config.context_length, device=device)  # (context,)
        # What a forward of several rows writes and reads, set by prefill and step once for every layer: each new
        # token's position in its row (batch, seq); where its keys go and which of k's rows they are, in a layer
        # viewed as (-1, head_dim) (None: all, in order); the mask (batch, 1, seq, keys); cos and sin, made by the
        # first layer. `packed`: a prefill, which attends over the new keys themselves, not the cache's; `ends`:
        # its prompts' last tokens (prompts, 2) as (sequence, column), the only positions it takes logits of.
        self.positions = self.write_to = self.write_from = self.mask = self.angles = self.ends = None
        self.packed = False

    def prefill(self, model: torch.nn.Module, prompts: list[list[int]], vocab_size: int) -> torch.Tensor:
        """Add `prompts` as new rows, prefilled in one forward; returns each one's next-token logits (new rows, vocab)."""
        tokens, positions, segments, ends = pack_prompts(prompts, self.max_seq_len)  # (sequences, width) each
        sequence, column = (segments >= 0).nonzero(as_tuple=True)  # (tokens,) each
        start, heads, width = self.batch_size, self.keys[0].shape[1], tokens.shape[1]
        head = torch.arange(heads)[:, None]  # k viewed as (-1, head_dim) is ordered (sequence, head, column)
        write_from = ((sequence * heads + head) * width + column).flatten()
        slot = start + segments[sequence, column]
        write_to = ((slot * heads + head) * self.max_seq_len + positions[sequence, column]).flatten()
        device = self.key_positions.device
        mask = None  # one prompt: plainly causal, without a mask
        if len(prompts) > 1:
            same_prompt = segments[:, None, :, None] == segments[:, None, None, :]  # (sequences, 1, width, width)
            mask = (same_prompt & (positions[:, None, :, None] >= positions[:, None, None, :])).to(device)
        self.positions, self.write_to, self.write_from = positions.to(device), write_to.to(device), write_from.to(device)
        self.mask, self.packed, self.angles, self.batch_size, self.position = mask, True, None, len(tokens), 0
        self.ends = ends.to(device)
        try:
            logits = model(tokens.to(device), kv_cache=self)  # (prompts, 1, vocab)
        finally:
            self.batch_size, self.packed = start, False
        self.lengths[start : start + len(prompts)] = [len(prompt) for prompt in prompts]
        self.batch_size += len(prompts)
        return logits[:, -1, :vocab_size]

    def step(self, model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """Feed one token per active row, `tokens` (rows,); returns the logits after them (rows, vocab)."""
        lengths = self.lengths[: self.batch_size]
        self.position = max(lengths)  # the model checks position + 1 fits the context
        if self.batch_size > 1:
            device = self.key_positions.device
            self.positions = torch.tensor(lengths, device=device)[:, None]  # (rows, 1)
            row_heads = torch.arange(self.batch_size * self.keys[0].shape[1], device=device).view(self.batch_size, -1)
            self.write_to, self.write_from = (row_heads * self.max_seq_len + self.positions).flatten(), None
            visible = self.key_positions[None, : self.position + 1] <= self.positions  # (rows, keys)
            self.mask, self.packed, self.angles = visible[:, None, None, :], False, None
        return model(tokens[:, None], kv_cache=self)[:, -1, :vocab_size]

    def remove_row(self, slot: int) -> None:
        """Free `slot`: the last active row moves into it (its keys, values and length), so the active rows stay
        slots [0, rows) and a step reads contiguous views instead of gathering the cache."""
        last = self.batch_size - 1
        if slot != last:
            length = self.lengths[last]
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, :length] = keys[last, :, :length]
                values[slot, :, :length] = values[last, :, :length]
            self.lengths[slot] = length
        self.batch_size = last

    def token_positions(self, seq_len: int) -> torch.Tensor:
        """(seq,) for a lone row; else (batch, seq) each token's own position (broadcast as (batch, seq, d_model))."""
        return super().token_positions(seq_len) if self.lone_row() else self.positions

    def rotary_angles(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """As KVCache's, or (batch, seq, 1, 1, head_dim / 2): each token's angles, broadcast over q/k (batch, seq, 2,
        heads, ...)."""
        if self.lone_row():
            return super().rotary_angles(cos, sin, seq_len)
        if self.angles is None:
            self.angles = cos[self.positions][:, :, None, None, :], sin[self.positions][:, :, None, None, :]
        return self.angles

    def update(self, layer_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (batch, heads, seq, head_dim); return the keys/values (batch, heads, keys, head_dim) to attend over."""
        keys, values = self.keys[layer_index], self.values[layer_index]
        if self.lone_row():
            keys[:1, :, self.position] = k[:, :, 0]
            values[:1, :, self.position] = v[:, :, 0]
        else:  # each token's keys at its row's own position: one copy into flat views, not a scatter
            for cache, new in ((keys, k), (values, v)):
                new = new.reshape(-1, new.shape[-1])  # (batch * heads * seq, head_dim)
                new = new if self.write_from is None else new.index_select(0, self.write_from)
                cache.view(-1, new.shape[-1]).index_copy_(0, self.write_to, new)
        if self.packed:
            return k, v
        return keys[: self.batch_size, :, : self.position + 1], values[: self.batch_size, :, : self.position + 1]

    def attention_mask(self, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        """None for a lone row; else (batch, 1, seq, keys): each token sees its own row's filled positions (None and
        causal for a prefill of one prompt)."""
        return (None, False) if self.lone_row() else (self.mask, self.mask is None)

    def select_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """A prefill's: each prompt's last token, (prompts, 1, d_model); a step's: x, one token per row."""
        return x[self.ends[:, 0], self.ends[:, 1]][:, None] if self.packed else x

    def lone_row(self) -> bool:
        return self.batch_size == 1 and not self.packed

    def advance(self, seq_len: int) -> None:
        if not self.packed:
            for slot in range(self.batch_size):
                self.lengths[slot] += seq_len


def pack_prompts(prompts: list[list[int]], capacity: int) -> tuple[torch.Tensor, ...]:
    """`prompts` packed into sequences of at most `capacity` tokens: (tokens, each token's position in its prompt, its
    prompt's index or -1 for padding), each (sequences, width), and each prompt's last token (prompts, 2) as
    (sequence, column)."""
    # Packed, not padded to the longest (prompts of 20-60 tokens waste a third of a padded forward), into
    # sequences of the multiple of the longest prompt that leaves the least padding.
    lengths = list(map(len, prompts))
    filled, places = min((pack_lengths(lengths, width) for width in range(max(lengths), capacity + 1, max(lengths))),
                         key=lambda packing: len(packing[0]) * max(packing[0]))
    tokens, positions = (torch.zeros(len(filled), max(filled), dtype=torch.long) for _ in range(2))
    segments = torch.full_like(tokens, -1)
    for index, (prompt, (sequence, offset)) in enumerate(zip(prompts, places, strict=True)):
        span = slice(offset, offset + len(prompt))
        tokens[sequence, span] = torch.tensor(prompt)
        positions[sequence, span] = torch.arange(len(prompt))
        segments[sequence, span] = index
    ends = torch.tensor([(sequence, offset + len(prompt) - 1)
                         for prompt, (sequence, offset) in zip(prompts, places, strict=True)])
    return tokens, positions, segments, ends


def pack_lengths(lengths: list[int], capacity: int) -> tuple[list[int], list[tuple[int, int]]]:
    """First-fit decreasing: the filled length of each sequence, and each length's (sequence, offset)."""
    filled: list[int] = []
    places = [(0, 0)] * len(lengths)
    for index in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        sequence = next((number for number, used in enumerate(filled) if used + lengths[index] <= capacity), len(filled))
        if sequence == len(filled):
            filled.append(0)
        places[index] = (sequence, filled[sequence])
        filled[sequence] += lengths[index]
    return filled, places
