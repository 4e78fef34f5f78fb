"""Evaluation-test fixtures: a byte-level tokenizer and models whose predictions are known by construction."""

from __future__ import annotations

import pytest
import torch

from gpt25.model import ModelConfig, TransformerLM
from gpt25.tokenizer import Tokenizer

PADDED_VOCAB = 272  # the byte tokenizer's 257 ids plus unused padding, as real checkpoints pad to 50304


@pytest.fixture
def byte_tokenizer() -> Tokenizer:
    """Every byte is a token (ids 0..255), <|endoftext|> is 256: token text is easy to count by hand."""
    return Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"])


def build_context_free_lm(scores: torch.Tensor, context_length: int = 64) -> TransformerLM:
    """A real TransformerLM whose logits are `scores` (vocab,) at every position, whatever the input.

    The blocks' output projections are zero (each block adds nothing), every embedding is all ones
    (RMSNorm keeps it all ones) and lm_head row t sums to scores[t].
    """
    d_model = 16
    config = ModelConfig(vocab_size=len(scores), context_length=context_length, d_model=d_model,
                         num_layers=1, num_heads=2, d_ff=32)
    model = TransformerLM(config)
    with torch.no_grad():
        for block in model.layers:
            block.attn.output_proj.weight.zero_()
            block.ffn.w2.weight.zero_()
        model.token_embeddings.weight.fill_(1.0)
        model.lm_head.weight.copy_((scores / d_model)[:, None].expand(-1, d_model))
    return model.eval()


def build_random_lm(vocab_size: int = PADDED_VOCAB, context_length: int = 64, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=32, num_layers=2,
                         num_heads=2, d_ff=64)
    return TransformerLM(config).eval()


@pytest.fixture
def context_free_lm():
    """Factory: scores (vocab,) -> a model predicting them everywhere (see build_context_free_lm)."""
    return build_context_free_lm


@pytest.fixture
def random_lm():
    """Factory: a seeded random 2-layer model, vocab 272 (padded past the byte tokenizer's 257) by default."""
    return build_random_lm
