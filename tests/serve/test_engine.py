"""The batching engine on its own: rows joining and leaving mid-batch, per-row results as if alone."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from serve_helpers import byte_tokenizer, tiny_lm

from gpt25.engine import generate_tokens, pack_lengths, pack_prompts
from gpt25.serve.engine import Engine, QueueFull, Request, held_back


def request(prompt: bytes, max_tokens: int, temperature: float = 0.0, **settings) -> Request:
    """A request whose `done` event is set when it finishes (greedy unless told)."""
    done = threading.Event()
    made = Request(list(prompt), max_tokens, lambda kind, _value: kind == "done" and done.set(),
                   temperature=temperature, **settings)
    made.done = done
    return made


def run_to_completion(engine: Engine, requests: list[Request]) -> None:
    """Queue `requests` (the engine prefills those that fit together), start the engine, wait for all, stop it."""
    for made in requests:
        engine.submit(made)
    engine.start()
    for made in requests:
        assert made.done.wait(30)
    engine.stop()


@pytest.mark.parametrize("arch", ["gpt25", "gpt2"])  # RoPE per row; learned positions per row
def test_rows_that_join_and_leave_mid_batch_decode_as_if_alone(arch: str) -> None:
    model, tokenizer = tiny_lm(arch=arch), byte_tokenizer()
    engine = Engine(model, tokenizer.vocab, tokenizer.vocab_size, max_batch=3)
    # The first three, queued before the engine starts, are prefilled together (two sampled rows with the same
    # settings, filtered together); different prompt lengths and budgets: rows leave at different steps,
    # queued ones take their slots.
    requests = [request(b"seeded", 15, temperature=0.9, seed=3), request(b"same settings", 9, temperature=0.9, seed=4),
                request(b"Hello", 5), request(b"a longer prompt", 30), request(b"x", 12), request(b"12345", 20),
                request(b"zz", 25)]
    run_to_completion(engine, requests)
    for made in requests:
        generator = torch.Generator().manual_seed(made.seed) if made.seed is not None else None
        alone = generate_tokens(model, torch.tensor([made.prompt_ids]), max_new_tokens=made.max_tokens,
                                temperature=made.temperature, generator=generator)[0].tolist()
        assert made.completion_ids == alone
        assert made.finish_reason == "length"
    assert engine.load() == (0, 0) and engine.cache.batch_size == 0


@pytest.mark.parametrize("arch", ["gpt25", "gpt2"])
def test_prompts_packed_together_decode_as_if_alone(arch: str) -> None:
    """Prompts of 20, 15, 12, 9 and 3 tokens are prefilled as four sequences of 20 (the 3 after the 15, then
    padding), each token seeing only its own prompt."""
    model, tokenizer = tiny_lm(arch=arch, context_length=32), byte_tokenizer()
    engine = Engine(model, tokenizer.vocab, tokenizer.vocab_size, max_batch=5)
    lengths = (20, 15, 12, 9, 3)
    segments = pack_prompts([[0] * length for length in lengths], 32)[2]
    assert segments.tolist() == [[0] * 20, [1] * 15 + [4] * 3 + [-1] * 2, [2] * 12 + [-1] * 8, [3] * 9 + [-1] * 11]
    requests = [request(bytes(range(65 + length, 65 + 2 * length)), 32 - length) for length in lengths]
    run_to_completion(engine, requests)
    for made in requests:
        alone = generate_tokens(model, torch.tensor([made.prompt_ids]), max_new_tokens=made.max_tokens)[0].tolist()
        assert made.completion_ids == alone


@given(st.lists(st.integers(1, 40), min_size=1, max_size=20))
def test_packing_places_every_prompt_once_within_the_capacity(lengths: list[int]) -> None:
    filled, places = pack_lengths(lengths, 40)
    spans = sorted((sequence, offset, offset + length) for (sequence, offset), length in zip(places, lengths, strict=True))
    for (sequence, _start, end), following in zip(spans, [*spans[1:], None], strict=True):
        assert end <= filled[sequence] <= 40
        assert following is None or following[0] != sequence or following[1] >= end  # no overlap
    assert sum(filled) == sum(lengths) and all(filled)
    assert len(filled) < 2 * -(-sum(lengths) // 40) + 1  # first fit: at most one sequence half empty or less


def test_a_cancelled_request_finishes_as_cancelled_and_frees_its_row() -> None:
    model, tokenizer = tiny_lm(), byte_tokenizer()
    engine = Engine(model, tokenizer.vocab, tokenizer.vocab_size, max_batch=2)
    cancelled, kept = request(b"abc", 200), request(b"abc", 40)
    cancelled.cancel()
    engine.submit(cancelled)
    engine.submit(kept)
    engine.start()
    assert cancelled.done.wait(30) and kept.done.wait(30)
    engine.stop()
    assert cancelled.finish_reason == "cancelled" and cancelled.completion_ids == []
    assert kept.finish_reason == "length" and len(kept.completion_ids) == 40


def test_held_back_is_the_longest_end_that_may_start_a_stop_string() -> None:
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("xyz", "lo!")) == 2
    assert held_back("hello", ("abc",)) == 0


def test_an_error_in_the_loop_ends_every_request_and_refuses_new_ones() -> None:
    model, tokenizer = tiny_lm(), byte_tokenizer()
    engine = Engine(model, tokenizer.vocab, tokenizer.vocab_size, max_batch=1)

    def broken_step() -> None:
        raise RuntimeError("out of memory")

    engine._step = broken_step
    running, waiting = request(b"abc", 10), request(b"abc", 10)
    engine.submit(running)
    engine.submit(waiting)
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.thread.run()  # the loop, in this thread: the error comes out after the clean-up
    assert running.done.is_set() and running.finish_reason == "cancelled"
    assert waiting.done.is_set() and waiting.finish_reason == "cancelled"
    with pytest.raises(QueueFull, match="stopped"):
        engine.submit(request(b"abc", 10))
