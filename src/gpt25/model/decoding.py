"""What the model asks of a decoding state: the small interface a KV cache (`gpt25.engine`) implements.

`TransformerLM.forward(token_ids, kv_cache)` hands it to every attention block, so a forward continues where the
last one stopped; the model never imports an implementation. Manual: docs/model.md
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class DecodingState(Protocol):
    """A sequence being decoded: how far it is filled, and its keys and values per layer."""

    batch_size: int
    max_seq_len: int
    position: int  # positions filled so far; the next forward computes [position, position + seq)

    def qkv_weight(self, layer_index: int, stack: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The layer's q, k and v weights stacked (3 d_model, d_model): `stack()`, or what it gave before."""

    def rotary_angles(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """From RoPE's tables (max_seq_len, head_dim / 2): cos, sin (seq, 1, 1, head_dim / 2) of the new positions."""

    def token_positions(self, seq_len: int) -> torch.Tensor:
        """The positions (seq,) of the new tokens, [position, position + seq), for learned position embeddings."""

    def update(self, layer_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v (batch, heads, seq, head_dim); return the keys and values to attend over."""

    def attention_mask(self, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        """(boolean mask (seq, keys) or None, is_causal) for `seq` new queries over the keys `update` returned."""

    def select_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Of the last layer's output x (batch, seq, d_model), the positions whose logits the forward returns."""

    def advance(self, seq_len: int) -> None:
        """Count `seq_len` more positions as filled (called by the model after each forward)."""
