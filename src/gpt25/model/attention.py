"""Causal multi-head self-attention with rotary positions, and the KV cache used for fast decoding.

Two attention paths give the same numbers: the hand-written `scaled_dot_product_attention`
(explicit scores, mask and softmax; for reading and testing) and PyTorch's fused
`torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (the flash path, used by default).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as fused_attention

from gpt25.model.config import ModelConfig
from gpt25.model.layers import Linear, RotaryEmbedding, apply_rotary, linear, softmax


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) v for any leading batch dims; boolean `mask` True means "may attend".

    q (..., queries, d_k), k (..., keys, d_k), v (..., keys, d_v), mask (..., queries, keys) -> (..., queries, d_v)
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (..., queries, keys)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(softmax(scores, dim=-1), v)


def causal_mask(num_queries: int, num_keys: int, device: torch.device | None = None) -> torch.Tensor:
    """(num_queries, num_keys) boolean mask: the last query sees every key, earlier ones one fewer each."""
    offset = num_keys - num_queries
    query_positions = torch.arange(num_queries, device=device)[:, None] + offset
    return torch.arange(num_keys, device=device)[None, :] <= query_positions


class KVCache:
    """Preallocated per-layer keys and values, (batch, heads, max_seq_len, head_dim) each.

    `position` counts the positions filled so far; `TransformerLM.forward(token_ids, kv_cache)`
    writes positions [position, position + seq) and advances it. `reset()` starts a new sequence.
    Under no_grad / inference_mode it also keeps each layer's q/k/v weights concatenated, so a
    decoding step does one matmul for them without copying the weights again every step.
    The attention asks the cache for the rotary angles, the keys/values and the mask of the
    positions it computes, so `StaticKVCache` can answer the same questions with fixed shapes.
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

    def rotary_angles(self, rope: RotaryEmbedding, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (seq, 1, 1, head_dim / 2) of positions [position, position + seq)."""
        end = self.position + seq_len
        return rope.cos[self.position : end, None, None, :], rope.sin[self.position : end, None, None, :]

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
    which is what capturing it once in a CUDA graph and replaying it needs (`gpt25.sample`).
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

    def rotary_angles(self, rope: RotaryEmbedding, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > 1:
            return super().rotary_angles(rope, seq_len)
        cos = rope.cos.index_select(0, self.position_tensor)  # (1, head_dim / 2)
        sin = rope.sin.index_select(0, self.position_tensor)
        return cos[:, None, None, :], sin[:, None, None, :]

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


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention; RoPE on q and k per head; state dict q/k/v/output_proj (d_model, d_model) each.

    The three input projections are concatenated at compute time into one (3 d_model, d_model)
    matmul (`fuse_qkv`), which keeps checkpoints stable while doing a single large GEMM.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        rope: RotaryEmbedding | None = None,
        layer_index: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if num_heads <= 0 or d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}; pick another head count")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.layer_index = layer_index
        self.rope = rope
        self.use_sdpa = True
        self.fuse_qkv = True
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)

    def project_qkv(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, seq, 3, heads, head_dim) holding q, k, v."""
        if self.fuse_qkv and kv_cache is not None and not torch.is_grad_enabled():
            weight = kv_cache.qkv_weights.get(self.layer_index)
            if weight is None:
                weight = kv_cache.qkv_weights[self.layer_index] = self.qkv_weight()
            qkv = linear(x, weight)
        elif self.fuse_qkv and x.shape[1] > 1:
            # One-token steps without a cache skip the fusion: copying the weights would cost as much as the matmul.
            qkv = torch.matmul(x, self.qkv_weight().t())
        else:
            qkv = torch.cat((self.q_proj(x), self.k_proj(x), self.v_proj(x)), dim=-1)
        return qkv.unflatten(-1, (3, self.num_heads, self.head_dim))

    def qkv_weight(self) -> torch.Tensor:
        """The q, k and v weights stacked: (3 d_model, d_model)."""
        return torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model); with a cache, x holds positions [cache.position, +seq)."""
        batch_size, seq_len, _ = x.shape
        qkv = self.project_qkv(x, kv_cache)  # (batch, seq, 3, heads, head_dim)
        # split (not slicing) so the backward is one cat rather than zero-filled scatters
        qk, v = qkv.split((2, 1), dim=2)  # (batch, seq, 2, heads, head_dim), (batch, seq, 1, heads, head_dim)
        if self.rope is not None:
            if kv_cache is None:
                cos = self.rope.cos[:seq_len, None, None, :]  # (seq, 1, 1, head_dim / 2)
                sin = self.rope.sin[:seq_len, None, None, :]
            else:
                cos, sin = kv_cache.rotary_angles(self.rope, seq_len)
            qk = apply_rotary(qk, cos, sin)  # q and k rotated in one go
        q, k = qk.transpose(1, 3).unbind(2)  # (batch, heads, seq, head_dim) each
        v = v.squeeze(2).transpose(1, 2)  # (batch, heads, seq, head_dim)
        if kv_cache is None:
            attended = self.attend(q, k, v, is_causal=True)
        else:
            k, v = kv_cache.update(self.layer_index, k, v)  # keys/values (batch, heads, keys, head_dim)
            mask, is_causal = kv_cache.attention_mask(seq_len)
            attended = self.attend(q, k, v, mask=mask, is_causal=is_causal)
        attended = attended.transpose(1, 2).reshape(batch_size, seq_len, self.d_model)  # (batch, seq, d_model)
        return self.output_proj(attended)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """Attention over (batch, heads, seq, head_dim) inputs, causal or under a boolean mask (True = may attend)."""
        if self.use_sdpa:
            return fused_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        if is_causal:
            mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        return scaled_dot_product_attention(q, k, v, mask)
