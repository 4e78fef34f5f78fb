"""The GPT 2.5 decoder: pre-norm block, language model, parameter counts, FLOPs and decay groups.

Initialisation (each module's `reset_parameters`, re-run by `TransformerLM.init_weights()`):

| parameter                                   | init                                          |
|---------------------------------------------|-----------------------------------------------|
| token_embeddings.weight (vocab, d)          | N(0, 1) truncated at +-3                      |
| attn.{q,k,v,output}_proj.weight (d, d)      | N(0, 2/(d+d)) truncated at +-3 std            |
| ffn.w1/w3.weight (d_ff, d), ffn.w2 (d, d_ff)| N(0, 2/(d+d_ff)) truncated at +-3 std         |
| lm_head.weight (vocab, d)                   | N(0, 2/(d+vocab)) truncated at +-3 std        |
| ln1/ln2/ln_final.weight (d,)                | ones                                          |
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from gpt25.model.attention import MultiHeadSelfAttention
from gpt25.model.config import ModelConfig
from gpt25.model.decoding import DecodingState
from gpt25.model.layers import Embedding, Linear, RMSNorm, RotaryEmbedding, SwiGLU


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + ffn(ln2(x))."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        rope: RotaryEmbedding | None = None,
        layer_index: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.ln1 = RMSNorm(d_model, device=device, dtype=dtype)
        self.attn = MultiHeadSelfAttention(d_model, num_heads, rope, layer_index, device=device, dtype=dtype)
        self.ln2 = RMSNorm(d_model, device=device, dtype=dtype)
        self.ffn = SwiGLU(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, kv_cache: DecodingState | None = None) -> torch.Tensor:
        # (batch, seq, d_model) -> (batch, seq, d_model)
        x = x + self.attn(self.ln1(x), kv_cache)
        return x + self.ffn(self.ln2(x), kv_cache)


class TransformerLM(nn.Module):
    """Decoder-only LM: token embedding, `num_layers` blocks, final RMSNorm, untied `lm_head`."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None, dtype=None) -> None:
        super().__init__()
        self.config = config
        # One shared cos/sin table: a buffer only (no parameters), so per-block FSDP wrapping is unaffected.
        self.rope = RotaryEmbedding(config.rope_theta, config.head_dim, config.context_length, device=device)
        self.token_embeddings = Embedding(config.vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(
                config.d_model, config.num_heads, config.d_ff, self.rope, index, device=device, dtype=dtype
            )
            for index in range(config.num_layers)
        )
        self.ln_final = RMSNorm(config.d_model, device=device, dtype=dtype)
        self.lm_head = Linear(config.d_model, config.vocab_size, device=device, dtype=dtype)

    def init_weights(self) -> None:
        """(Re-)initialise every parameter and the RoPE tables in place, e.g. after `to_empty()` from meta."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, token_ids: torch.Tensor, kv_cache: DecodingState | None = None) -> torch.Tensor:
        """token_ids (batch, seq) int -> logits (batch, seq, vocab); with a cache, positions continue from it."""
        self.check_inputs(token_ids, kv_cache)
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model)
        for layer in self.layers:
            x = layer(x, kv_cache)
        logits = self.lm_head(self.ln_final(x), kv_cache)  # (batch, seq, vocab)
        if kv_cache is not None:
            kv_cache.advance(token_ids.shape[1])
        return logits

    @torch.no_grad()
    def grow_vocab(self, vocab_size: int) -> None:
        """Add rows to the token embedding and the output head up to `vocab_size` (tokens appended to the
        tokenizer, such as chat role tokens); each new row starts at the mean of the existing rows."""
        old_size = self.config.vocab_size
        if vocab_size < old_size:
            raise ValueError(f"cannot shrink the vocab from {old_size} to {vocab_size}")
        for module in (self.token_embeddings, self.lm_head):
            weight = module.weight  # (old_size, d_model)
            new_rows = weight.mean(dim=0, keepdim=True).expand(vocab_size - old_size, -1)
            module.weight = nn.Parameter(torch.cat([weight, new_rows]), requires_grad=weight.requires_grad)
        self.token_embeddings.num_embeddings = self.lm_head.out_features = vocab_size
        self.config = dataclasses.replace(self.config, vocab_size=vocab_size)

    def check_inputs(self, token_ids: torch.Tensor, kv_cache: DecodingState | None) -> None:
        """Shape, dtype and length checks (free); the id-range check only for ids on the CPU, since on
        an accelerator it would cost a device sync on every forward (and is skipped inside torch.compile)."""
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 2:
            shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
            raise ValueError(f"token_ids must be a (batch, seq) tensor, got {shape}")
        if token_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token_ids must be int64 (or int32), got {token_ids.dtype}; use .long()")
        seq_len = token_ids.shape[1]
        start = kv_cache.position if kv_cache is not None else 0
        limit = kv_cache.max_seq_len if kv_cache is not None else self.config.context_length
        if seq_len == 0 or start + seq_len > limit:
            raise ValueError(
                f"positions {start}..{start + seq_len} do not fit in 1..{limit} "
                f"(context_length={self.config.context_length}); crop the input or reset the cache"
            )
        if kv_cache is not None and token_ids.shape[0] != kv_cache.batch_size:
            raise ValueError(f"batch {token_ids.shape[0]} != KVCache batch_size {kv_cache.batch_size}")
        if token_ids.device.type == "cpu" and not torch.compiler.is_compiling():
            low, high = (int(value) for value in torch.aminmax(token_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(
                    f"token ids must be in [0, {self.config.vocab_size}), got min {low} max {high}; "
                    "check the tokenizer matches the model's vocab_size"
                )

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count; without embeddings excludes the token embedding table (lm_head is counted)."""
        total = sum(parameter.numel() for parameter in self.parameters())
        if not include_embeddings:
            total -= self.token_embeddings.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) for MFU.

        6 * N + 12 * num_layers * d_model * seq_len, with N the parameters excluding the token
        embedding (a lookup, not a matmul; lm_head is counted). The second term is the attention
        scores and weighted sum (2 matmuls of 2 * seq * d_model FLOPs per token, x3 for backward),
        counted over the full seq x seq square as in PaLM / nanoGPT, not halved for causality.
        """
        seq_len = seq_len or self.config.context_length
        config = self.config
        return 6 * self.num_params(include_embeddings=False) + 12 * config.num_layers * config.d_model * seq_len


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Optimizer groups: matrices decay, RMSNorm gains and embeddings do not (unless `decay_all`)."""
    if decay_all:
        return [{"params": [parameter for parameter in model.parameters() if parameter.requires_grad],
                 "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            (no_decay if isinstance(module, (RMSNorm, Embedding)) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
