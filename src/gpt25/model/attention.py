"""Causal multi-head self-attention, with rotary positions (or none: GPT-2 adds learned ones to its input).

The model attends with PyTorch's fused SDPA (the flash path); the hand-written `scaled_dot_product_attention`
says what it computes, and the tests hold the two to the same numbers. Manual: docs/model.md
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention as fused_attention

from gpt25.model.decoding import DecodingState
from gpt25.model.layers import Linear, RMSNorm, RotaryEmbedding, apply_rotary, linear, softmax


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
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


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention; `std`/`output_std` initialise the input and output projections as Linear's;
    `qk_norm`: RMSNorm (a gain per head dim, shared by the heads) on each head's q and k before RoPE."""

    def __init__(self, d_model: int, num_heads: int, rope: RotaryEmbedding | None = None, layer_index: int = 0,
                 bias: bool = False, std: float | None = None, output_std: float | None = None, qk_norm: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()  # d_model % num_heads == 0 is ModelConfig's to check
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.layer_index = layer_index
        self.rope = rope
        self.q_proj = Linear(d_model, d_model, bias, std, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, bias, std, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, bias, std, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, bias, output_std, device=device, dtype=dtype)
        self.q_norm = RMSNorm(self.head_dim, device=device, dtype=dtype) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, device=device, dtype=dtype) if qk_norm else None

    def project_qkv(self, x: torch.Tensor, kv_cache: DecodingState | None = None) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, seq, 3, heads, head_dim) holding q, k, v."""
        # A decoding state keeps the stacked weight between steps: no cat of three matrices per token.
        weight = self.qkv_weight() if kv_cache is None else kv_cache.qkv_weight(self.layer_index, self.qkv_weight)
        qkv = linear(x, weight)  # (batch, seq, 3 d_model)
        if self.q_proj.bias is not None:  # small: stacked again at every call
            qkv = qkv + torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias))
        return qkv.unflatten(-1, (3, self.num_heads, self.head_dim))

    def qkv_weight(self) -> torch.Tensor:
        """The q, k and v weights stacked: (3 d_model, d_model)."""
        # Concatenated at compute time, not stored so: the checkpoints keep q/k/v_proj, the matmul is one large GEMM.
        return torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))

    def forward(self, x: torch.Tensor, kv_cache: DecodingState | None = None) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model); with a cache, x holds positions [cache.position, +seq)."""
        batch_size, seq_len, _ = x.shape
        qkv = self.project_qkv(x, kv_cache)  # (batch, seq, 3, heads, head_dim)
        # split (not slicing) so the backward is one cat rather than zero-filled scatters
        qk, v = qkv.split((2, 1), dim=2)  # (batch, seq, 2, heads, head_dim), (batch, seq, 1, heads, head_dim)
        if self.q_norm is not None:  # bounds the attention logits whatever the weights' scale
            q, k = qk.unbind(2)
            qk = torch.stack((self.q_norm(q), self.k_norm(k)), dim=2)
        if self.rope is not None:
            if kv_cache is None:
                cos = self.rope.cos[:seq_len, None, None, :]  # (seq, 1, 1, head_dim / 2)
                sin = self.rope.sin[:seq_len, None, None, :]
            else:
                cos, sin = kv_cache.rotary_angles(self.rope.cos, self.rope.sin, seq_len)
            qk = apply_rotary(qk, cos, sin)  # q and k rotated in one go
        q, k = qk.transpose(1, 3).unbind(2)  # (batch, heads, seq, head_dim) each
        v = v.squeeze(2).transpose(1, 2)  # (batch, heads, seq, head_dim)
        if kv_cache is None:
            attended = fused_attention(q, k, v, is_causal=True)
        else:
            k, v = kv_cache.update(self.layer_index, k, v)  # keys/values (batch, heads, keys, head_dim)
            mask, is_causal = kv_cache.attention_mask(seq_len)
            attended = fused_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        attended = attended.transpose(1, 2).reshape(batch_size, seq_len, self.d_model)  # (batch, seq, d_model)
        return self.output_proj(attended)
