"""Decoding state: the KV caches a generation fills, and the decoding step captured in a CUDA graph.

The training-time model (`gpt25.model`) knows none of this: its forward takes any
`DecodingState`, and `KVCache` is one. It keeps each layer's keys and values and stacked q/k/v
weight, and computes the model's products while decoding (`split_linear`: on the CPU, a product
of few rows split over the cores). `StaticKVCache` answers the same questions with fixed shapes
and its position on the device, so that `DecodeStep` can capture one step in a CUDA graph and
replay it. `gpt25.sample` drives them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from gpt25.model import ModelConfig, causal_mask

SPLIT_MATMUL_MAX_ROWS = 64  # on CPU, products with at most this many rows are split over the threads


def split_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T for x (..., in_features) and W (out_features, in_features), as the KV caches compute it.

    On CPU without autograd, a product of few rows such as a decoding step's is memory-bound and
    BLAS runs it on one core: W's rows are then split into one block per thread and multiplied as
    a batch (bmm), which spreads the weight reads over every core.
    """
    if x.device.type != "cpu" or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return torch.matmul(x, weight.t())
    rows = x.numel() // x.shape[-1]
    threads = torch.get_num_threads()
    out_features, in_features = weight.shape
    if rows > SPLIT_MATMUL_MAX_ROWS or threads < 2 or out_features % threads:
        return torch.matmul(x, weight.t())
    x_columns = x.reshape(1, rows, in_features).transpose(1, 2).expand(threads, in_features, rows)
    blocks = weight.reshape(threads, out_features // threads, in_features)
    out = torch.bmm(blocks, x_columns)  # (threads, out_features / threads, rows)
    return out.permute(2, 0, 1).reshape(*x.shape[:-1], out_features)


class KVCache:
    """Preallocated per-layer keys and values, (batch, heads, max_seq_len, head_dim) each.

    `position` counts the positions filled so far; `TransformerLM.forward(token_ids, kv_cache)`
    writes positions [position, position + seq) and advances it. `reset()` starts a new sequence.
    The cache is the model's `DecodingState`: the attention asks it for the rotary angles, the
    keys/values and the mask of the positions it computes, so `StaticKVCache` can answer the same
    questions with fixed shapes. Under no_grad / inference_mode it also keeps each layer's q/k/v
    weights stacked, so a decoding step does one matmul for them without copying the weights again
    every step, and every product of the model goes through `split_linear`.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_seq_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not 0 < max_seq_len <= config.context_length:
            raise ValueError(
                f"max_seq_len={max_seq_len} must be in 1..context_length={config.context_length}; shorten the cache"
            )
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        head_dim = config.d_model // config.num_heads
        shape = (batch_size, config.num_heads, max_seq_len, head_dim)
        dtype = dtype or torch.float32
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_layers)]
        self.position = 0
        self.qkv_weights: dict[int, torch.Tensor] = {}  # layer index -> (3 d_model, d_model)

    def reset(self) -> None:
        """Forget the cached sequence (the buffers are reused, not cleared) and the concatenated weights."""
        self.position = 0
        self.qkv_weights.clear()

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x W^T, (..., in_features) -> (..., out_features), by `split_linear`."""
        return split_linear(x, weight)

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
        return self.keys[layer_index][:, :, :end].to(k.dtype), self.values[layer_index][:, :, :end].to(v.dtype)

    def attention_mask(self, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        """(boolean mask (seq, keys) or None, is_causal) for `seq` new queries over the keys `update` returned."""
        if self.position == 0 or seq_len == 1:
            # A fresh chunk is plainly causal; one new token may attend to everything cached.
            return None, self.position == 0
        return causal_mask(seq_len, self.position + seq_len, device=self.keys[0].device), False

    def advance(self, seq_len: int) -> None:
        """Count `seq_len` more positions as filled (called by the model after each forward)."""
        self.position += seq_len


class StaticKVCache(KVCache):
    """A KVCache whose one-token steps have fixed shapes and read their position from the device.

    A one-token step writes its keys/values at `position_tensor` (index_copy_), attends over the
    whole buffer under a mask of the filled positions and advances the tensor in place. Every such
    step therefore runs the same kernels on the same memory and never asks the host where it is,
    which is what capturing it once in a CUDA graph and replaying it needs (`DecodeStep`).
    Longer chunks, such as the prompt, take KVCache's own path; the host `position` is kept in step.
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
        if seq_len > 1:
            return super().token_positions(seq_len)
        return self.position_tensor  # (1,), read on the device

    def update(self, layer_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[-2] > 1:
            return super().update(layer_index, k, v)
        keys, values = self.keys[layer_index], self.values[layer_index]
        keys.index_copy_(2, self.position_tensor, k.to(keys.dtype))
        values.index_copy_(2, self.position_tensor, v.to(values.dtype))
        return keys.to(k.dtype), values.to(v.dtype)  # the whole buffers: (batch, heads, max_seq_len, head_dim)

    def attention_mask(self, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        if seq_len > 1:
            return super().attention_mask(seq_len)
        return self.key_positions <= self.position_tensor, False  # (1 query, max_seq_len keys): the filled ones

    def advance(self, seq_len: int) -> None:
        super().advance(seq_len)
        self.position_tensor += seq_len


class DecodeStep:
    """The one-token decoding step on a KV cache: logits (batch, vocab) after each new token.

    With `capture` (a CUDA device and a `StaticKVCache`), the first call runs the step once to warm
    up, then captures it in a CUDA graph; every call after that copies the token into the same
    input tensor and replays the graph, one launch instead of one per kernel. The step's position
    lives in the cache's `position_tensor`, so the replays need nothing from the host. If the
    capture fails, a warning says why and the steps run eagerly.
    """

    def __init__(self, model: torch.nn.Module, cache: KVCache, vocab_size: int, capture: bool) -> None:
        if capture and not isinstance(cache, StaticKVCache):
            raise ValueError("a captured decoding step needs a StaticKVCache (fixed shapes, position on the device)")
        self.model = model
        self.cache = cache
        self.vocab_size = vocab_size
        self.tokens = torch.zeros(cache.batch_size, 1, dtype=torch.long, device=cache.keys[0].device)
        self.capture = capture
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
                stacklevel=3,
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
