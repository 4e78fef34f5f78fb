"""The batching engine on its own: rows joining and leaving mid-batch, per-row results as if alone."""

from __future__ import annotations

import threading

import pytest
import torch
from serve_helpers import byte_tokenizer, tiny_lm

from gpt25.engine import generate_tokens
from gpt25.serve.engine import Engine, QueueFull, Request, held_back


def request(prompt: bytes, max_tokens: int, temperature: float = 0.0, **settings) -> Request:
    """A request whose `done` event is set when it finishes (greedy unless told)."""
    done = threading.Event()
    made = Request(list(prompt), max_tokens, lambda kind, _value: kind == "done" and done.set(),
                   temperature=temperature, **settings)
    made.done = done
    return made


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
    for made in requests:
        engine.submit(made)
    engine.start()
    for made in requests:
        assert made.done.wait(30)
    engine.stop()
    for made in requests:
        generator = torch.Generator().manual_seed(made.seed) if made.seed is not None else None
        alone = generate_tokens(model, torch.tensor([made.prompt_ids]), max_new_tokens=made.max_tokens,
                                temperature=made.temperature, generator=generator)[0].tolist()
        assert made.completion_ids == alone
        assert made.finish_reason == "length"
    assert engine.load() == (0, 0) and engine.cache.batch_size == 0


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
