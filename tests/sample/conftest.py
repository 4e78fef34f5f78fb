"""Sampling-test fixtures: a byte-level tokenizer, a random tiny model, a hand-built bigram model, saving a run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gpt25.checkpoint import make_meta, save_checkpoint
from gpt25.model import ModelConfig, TransformerLM
from gpt25.tokenizer import Tokenizer

EOT = 256  # <|endoftext|> in the byte tokenizer


@pytest.fixture
def byte_tokenizer() -> Tokenizer:
    """Every byte is a token (ids 0..255), <|endoftext|> is 256."""
    return Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"])


def build_random_lm(vocab_size: int = 257, context_length: int = 64, seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=32, num_layers=2,
                         num_heads=2, d_ff=64)
    return TransformerLM(config).eval()


def build_bigram_lm(
    next_scores: dict[int, dict[int, float]], vocab_size: int = 264, context_length: int = 64
) -> TransformerLM:
    """A real TransformerLM whose logits depend only on the last token: logit[t | i] = next_scores[i][t] (else 0).

    The blocks' output projections are zero (each block adds nothing), token i embeds as the one-hot
    e_i (RMSNorm turns it into sqrt(d) e_i) and lm_head column i holds row i of the score table / sqrt(d).
    """
    d_model = vocab_size
    config = ModelConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model, num_layers=1,
                         num_heads=2, d_ff=8)
    model = TransformerLM(config)
    scores = torch.zeros(vocab_size, vocab_size)  # (current, next)
    for current, row in next_scores.items():
        for following, score in row.items():
            scores[current, following] = score
    with torch.no_grad():
        for block in model.layers:
            block.attn.output_proj.weight.zero_()
            block.ffn.w2.weight.zero_()
        model.token_embeddings.weight.copy_(torch.eye(vocab_size))
        model.lm_head.weight.copy_(scores.t() / math.sqrt(d_model))
    return model.eval()


def build_chain(*token_ids: int, strength: float = 30.0) -> dict[int, dict[int, float]]:
    """Scores making each token strongly predict the next one in `token_ids`."""
    return {current: {following: strength} for current, following in zip(token_ids, token_ids[1:], strict=False)}


@pytest.fixture
def random_lm():
    """Factory: a seeded random 2-layer model over the byte tokenizer's 257 ids."""
    return build_random_lm


@pytest.fixture
def bigram_lm():
    """Factory: a model whose next-token scores depend only on the last token (see build_bigram_lm)."""
    return build_bigram_lm


@pytest.fixture
def chain():
    """Factory: scores that make each given token predict the next one."""
    return build_chain


def save_run_with_tokenizer(run_dir: Path, model: TransformerLM, tokenizer: Tokenizer) -> Path:
    """A run dir as training leaves it: checkpoints/step_0000001 and, beside them, tokenizer/."""
    meta = make_meta(1, model.config, tokenizer_fingerprint=tokenizer.fingerprint())
    save_checkpoint(model, None, 1, run_dir / "checkpoints" / "step_0000001", meta=meta)
    tokenizer.save(run_dir / "tokenizer")
    return run_dir


@pytest.fixture
def save_run():
    """Factory: save_run(run_dir, model, tokenizer) writes a run dir holding its tokenizer."""
    return save_run_with_tokenizer
