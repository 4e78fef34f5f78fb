"""Validation loss / perplexity / bits per byte: hand-computed values, whole-split coverage, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpt25.eval import evaluate_loss
from gpt25.eval.loss import token_byte_lengths, window_batches
from gpt25.tokenizer import Tokenizer


def bpe_tokenizer() -> Tokenizer:
    """Bytes plus two merges: "th" (256), "the" (257); <|endoftext|> is 258."""
    vocab = {index: bytes([index]) for index in range(256)} | {256: b"th", 257: b"the"}
    return Tokenizer(vocab, [(b"t", b"h"), (b"th", b"e")], ["<|endoftext|>"])


def test_bits_per_byte_matches_a_hand_computed_case(context_free_lm) -> None:
    tokenizer = bpe_tokenizer()
    # "the cat<|endoftext|>the" -> the | ' ' c a t | <eot> | the
    tokens = np.array(tokenizer.encode("the cat<|endoftext|>the"), dtype=np.uint16)
    assert tokens.tolist() == [257, 32, 99, 97, 116, 258, 257]
    scores = torch.zeros(260)
    scores[257] = math.log(8.0)  # "the" is 8x as likely as any other single token
    model = context_free_lm(scores)
    log_normaliser = math.log(259 + 8)
    loss_the, loss_other = log_normaliser - math.log(8.0), log_normaliser  # nats

    result = evaluate_loss(model, tokens, tokenizer, batch_size=2, context_length=4, device="cpu")

    # Targets: ' ' c a t (1 byte each), <eot> (special: 0 bytes, left out of bpb), the (3 bytes).
    all_nats = 4 * loss_other + loss_other + loss_the
    text_bits = (4 * loss_other + loss_the) / math.log(2)
    assert result["tokens"] == 6
    assert result["val_loss"] == pytest.approx(all_nats / 6, rel=1e-4)
    assert result["val_perplexity"] == pytest.approx(math.exp(all_nats / 6), rel=1e-4)
    assert result["val_bpb"] == pytest.approx(text_bits / 7, rel=1e-4)


def test_token_byte_lengths_count_text_bytes_and_zero_for_specials() -> None:
    lengths = token_byte_lengths(bpe_tokenizer(), 264)
    assert lengths[32].item() == 1 and lengths[256].item() == 2 and lengths[257].item() == 3
    assert lengths[258].item() == 0  # <|endoftext|>
    assert lengths[259:].tolist() == [0] * 5  # padding ids past the tokenizer


def test_windows_cover_every_prediction_once_without_overlap() -> None:
    batches = window_batches(num_tokens=23, context_length=5, batch_size=2)
    assert batches == [[(0, 5), (5, 5)], [(10, 5), (15, 5)], [(20, 2)]]
    predicted = [start + 1 + offset for batch in batches for start, length in batch for offset in range(length)]
    assert predicted == list(range(1, 23))


def test_whole_split_is_scored_deterministically_and_batch_size_does_not_matter(byte_tokenizer, random_lm) -> None:
    model = random_lm()
    tokens = np.random.default_rng(0).integers(0, 257, size=301).astype(np.uint16)
    first = evaluate_loss(model, tokens, byte_tokenizer, batch_size=3, context_length=32, device="cpu")
    again = evaluate_loss(model, tokens, byte_tokenizer, batch_size=3, context_length=32, device="cpu")
    one_at_a_time = evaluate_loss(model, tokens, byte_tokenizer, batch_size=1, context_length=32, device="cpu")
    assert first == again
    assert first["tokens"] == 300
    assert one_at_a_time["val_loss"] == pytest.approx(first["val_loss"], rel=1e-6)
    # Reference: one forward per window, summed by hand.
    total = 0.0
    with torch.no_grad():
        for start in range(0, 300, 32):
            window = torch.from_numpy(tokens[start : start + 33].astype(np.int64))[None]
            log_probs = torch.log_softmax(model(window[:, :-1]).double(), dim=-1)
            total -= log_probs.gather(-1, window[:, 1:, None]).sum().item()
    assert first["val_loss"] == pytest.approx(total / 300, rel=1e-5)


def test_max_tokens_limits_the_scored_predictions(byte_tokenizer, random_lm) -> None:
    model = random_lm()
    tokens = np.random.default_rng(1).integers(0, 257, size=200).astype(np.uint16)
    limited = evaluate_loss(model, tokens, byte_tokenizer, batch_size=4, context_length=16, device="cpu", max_tokens=50)
    prefix = evaluate_loss(model, tokens[:51], byte_tokenizer, batch_size=4, context_length=16, device="cpu")
    assert limited == prefix and limited["tokens"] == 50


def test_model_is_left_in_its_training_mode(byte_tokenizer, random_lm) -> None:
    model = random_lm().train()
    evaluate_loss(model, np.arange(40, dtype=np.uint16), byte_tokenizer, batch_size=2, context_length=8, device="cpu")
    assert model.training


def test_bad_inputs_are_one_line_errors(byte_tokenizer, random_lm) -> None:
    model = random_lm(context_length=16)
    with pytest.raises(ValueError, match="longer than the model"):
        evaluate_loss(model, np.arange(40), byte_tokenizer, batch_size=2, context_length=32, device="cpu")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_loss(model, np.arange(1), byte_tokenizer, batch_size=2, context_length=16, device="cpu")
    for max_tokens in (0, -5):  # -5 used to score all but the last 5 tokens
        with pytest.raises(ValueError, match=f"^max_tokens must be >= 1, got {max_tokens}$"):
            evaluate_loss(model, np.arange(40), byte_tokenizer, batch_size=2, context_length=16, device="cpu",
                          max_tokens=max_tokens)

