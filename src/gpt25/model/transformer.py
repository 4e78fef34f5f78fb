"""The decoder, GPT 2.5's or GPT-2's: pre-norm block, language model, parameter counts, FLOPs and decay groups.

Which norm, MLP, positions, biases and head the model has is the ModelConfig's choice; each combination builds.
Manual: docs/model.md; its "Initialisation" table is `config.init`'s, applied by each module's `reset_parameters`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from gpt25.model.attention import MultiHeadSelfAttention
from gpt25.model.config import ModelConfig
from gpt25.model.decoding import DecodingState
from gpt25.model.layers import MLP, Embedding, LayerNorm, Linear, Norm, RMSNorm, RotaryEmbedding, linear

GPT2_STD = 0.02


def init_stds(config: ModelConfig) -> tuple[float | None, float | None]:
    """(std of the projections, std of the residual output projections); None means the recipe's fan-scaled init."""
    if config.init != "gpt2":  # zero: every block starts as the identity, and the residual stream as the embedding
        return None, (0.0 if config.init == "zero" else None)
    # Two residual additions per block: scaled down so the stream's variance does not grow with the depth.
    return GPT2_STD, GPT2_STD / math.sqrt(2 * config.num_layers)


def make_norm(config: ModelConfig, device=None, dtype=None) -> Norm:
    norm_class = RMSNorm if config.norm == "rmsnorm" else LayerNorm
    return norm_class(config.d_model, device=device, dtype=dtype)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + ffn(ln2(x)); norms, MLP and biases as `config` says."""

    def __init__(self, config: ModelConfig, rope: RotaryEmbedding | None = None, layer_index: int = 0, device=None,
                 dtype=None) -> None:
        super().__init__()
        std, output_std = init_stds(config)
        self.ln1 = make_norm(config, device, dtype)
        self.attn = MultiHeadSelfAttention(config.d_model, config.num_heads, rope, layer_index, config.bias, std,
                                           output_std, config.qk_norm, device=device, dtype=dtype)
        self.ln2 = make_norm(config, device, dtype)
        self.ffn = MLP(config.mlp, config.d_model, config.d_ff, config.bias, std, output_std, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, kv_cache: DecodingState | None = None) -> torch.Tensor:
        # (batch, seq, d_model) -> (batch, seq, d_model); pre-norm: the residual path x stays un-normalised, so
        # gradients reach the early blocks undamped (post-norm needs careful warmup to train deep stacks)
        x = x + self.attn(self.ln1(x), kv_cache)
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only LM: token (+ learned position) embedding, `num_layers` blocks, final norm, output head (with
    `tie_embeddings`, no `lm_head` module: the head multiplies by the token embedding, held once in the state dict)."""

    def __init__(self, config: ModelConfig, device: torch.device | str | None = None, dtype=None) -> None:
        super().__init__()
        self.config = config
        std, _ = init_stds(config)
        # One shared cos/sin table: a buffer only (no parameters), so per-block FSDP wrapping is unaffected.
        self.rope = None
        if config.positions == "rope":
            self.rope = RotaryEmbedding(config.rope_theta, config.head_dim, config.context_length, device=device)
        self.token_embeddings = Embedding(config.vocab_size, config.d_model, std, device=device, dtype=dtype)
        self.position_embeddings = None
        if config.positions == "learned":
            self.position_embeddings = Embedding(config.context_length, config.d_model, std, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(config, self.rope, index, device=device, dtype=dtype) for index in range(config.num_layers)
        )
        self.ln_final = make_norm(config, device, dtype)
        self.lm_head = None
        if not config.tie_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, std=std, device=device, dtype=dtype)

    def init_weights(self) -> None:
        """(Re-)initialise every parameter and the RoPE tables in place, e.g. after `to_empty()` from meta."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, token_ids: torch.Tensor, kv_cache: DecodingState | None = None) -> torch.Tensor:
        """token_ids (batch, seq) int -> logits (batch, seq, vocab); with a cache, positions continue from it and the
        logits are those of the positions it selects (the caches of `gpt25.engine`: each sequence's last)."""
        self.check_inputs(token_ids, kv_cache)
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model)
        if self.position_embeddings is not None:
            seq_len = token_ids.shape[1]
            positions = kv_cache.token_positions(seq_len) if kv_cache is not None else slice(0, seq_len)
            x = x + self.position_embeddings.weight[positions]  # (seq, d_model) or a cache's (batch, seq, d_model)
        for layer in self.layers:
            x = layer(x, kv_cache)
        if kv_cache is not None:  # decoding reads the next token's logits only: no head over the rest of a prompt
            x = kv_cache.select_outputs(x)
        logits = self.head(self.ln_final(x))  # (batch, seq, vocab)
        if self.config.logit_softcap:  # bounds the logits smoothly, so no token's grows without limit
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        if kv_cache is not None:
            kv_cache.advance(token_ids.shape[1])
        return logits

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The output head: (batch, seq, d_model) -> logits (batch, seq, vocab), by lm_head or the tied embedding."""
        if self.lm_head is not None:
            return self.lm_head(x)
        return linear(x, self.token_embeddings.weight)  # weight (vocab, d_model)

    @torch.no_grad()
    def grow_vocab(self, vocab_size: int) -> None:
        """Add rows to the token embedding and the output head up to `vocab_size` (tokens appended to the
        tokenizer, such as chat role tokens); each new row starts at the mean of the existing rows. A tied
        head is the embedding, so it grows with it."""
        old_size = self.config.vocab_size
        if vocab_size < old_size:
            raise ValueError(f"cannot shrink the vocab from {old_size} to {vocab_size}")
        for module in (self.token_embeddings, self.lm_head):
            if module is None:
                continue
            weight = module.weight  # (old_size, d_model)
            new_rows = weight.mean(dim=0, keepdim=True).expand(vocab_size - old_size, -1)
            module.weight = nn.Parameter(torch.cat([weight, new_rows]), requires_grad=weight.requires_grad)
        self.config = dataclasses.replace(self.config, vocab_size=vocab_size)

    def check_inputs(self, token_ids: torch.Tensor, kv_cache: DecodingState | None) -> None:
        """ValueError for a bad shape, dtype or length; and for ids outside the vocab, when they are on the CPU."""
        if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 2:
            shape = tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__
            raise ValueError(f"token_ids must be a (batch, seq) tensor, got {shape}")
        if token_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token_ids must be int64 (or int32), got {token_ids.dtype}; use .long()")
        seq_len = token_ids.shape[1]
        start = kv_cache.position if kv_cache is not None else 0
        limit = kv_cache.max_seq_len if kv_cache is not None else self.config.context_length
        if seq_len == 0 or start + seq_len > limit:
            raise ValueError(f"positions {start}..{start + seq_len} do not fit in 1..{limit} "
                             f"(context_length={self.config.context_length}); crop the input or reset the cache")
        if kv_cache is not None and token_ids.shape[0] != kv_cache.batch_size:
            raise ValueError(f"batch {token_ids.shape[0]} != KVCache batch_size {kv_cache.batch_size}")
        # On an accelerator the id-range check would cost a device sync on every forward (and torch.compile skips it).
        if token_ids.device.type == "cpu" and not torch.compiler.is_compiling():
            low, high = (int(value) for value in torch.aminmax(token_ids))
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got min {low} max {high}; "
                                 "check the tokenizer matches the model's vocab_size")

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count (a tied matrix once); without embeddings excludes the token and position tables
        (an untied lm_head is counted)."""
        total = sum(parameter.numel() for parameter in self.parameters())
        if not include_embeddings:
            total -= sum(table.weight.numel() for table in (self.token_embeddings, self.position_embeddings)
                         if table is not None)
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) for MFU: 6 N + 12 num_layers d_model seq_len."""
        seq_len = seq_len or self.config.context_length
        config = self.config
        # N: the parameters but the embeddings (lookups, not matmuls), with the head's (vocab, d_model) matmul tied or not
        head = config.vocab_size * config.d_model if config.tie_embeddings else 0  # else counted in num_params
        # Attention's scores and weighted sum: 2 matmuls of 2 seq d_model FLOPs per token, x3 with the backward, over
        # the full seq x seq square as in PaLM / nanoGPT (not halved for causality).
        return 6 * (self.num_params(include_embeddings=False) + head) + 12 * config.num_layers * config.d_model * seq_len


def parameter_groups(model: nn.Module, weight_decay: float, decay_all: bool = False, muon: bool = False) -> list[dict]:
    """Optimizer groups: matrices decay; norm gains and biases, Linear biases and embeddings (token and
    position, and so a tied head) do not (unless `decay_all`). With `muon`, the blocks' matrices (every
    Linear weight but the output head's) form a group of their own marked {"muon": True}."""
    if decay_all and not muon:
        return [{"params": [parameter for parameter in model.parameters() if parameter.requires_grad],
                 "weight_decay": weight_decay}]
    hidden, decay, no_decay = [], [], []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            exempt = isinstance(module, (Norm, Embedding)) or name == "bias"
            matrix = muon and isinstance(module, Linear) and name == "weight" and module is not model.lm_head
            (hidden if matrix else no_decay if exempt and not decay_all else decay).append(parameter)
    groups = [{"params": hidden, "weight_decay": weight_decay, "muon": True},
              {"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
