"""gpt25.engine: the KV caches against the full forward, the captured decoding step."""

from __future__ import annotations

import warnings

import pytest
import torch

from gpt25.engine import DecodeStep, KVCache, StaticKVCache, decoding, generate_tokens, split_linear
from gpt25.model import ModelConfig, TransformerLM
from gpt25.model.layers import PRODUCTS, linear

CONFIG = ModelConfig(vocab_size=97, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=96)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(CONFIG).eval()


def test_greedy_decoding_with_cache_equals_recompute(model: TransformerLM) -> None:
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 5))
    with torch.no_grad():
        recomputed = prompt
        for _ in range(12):
            next_ids = model(recomputed)[:, -1].argmax(-1, keepdim=True)
            recomputed = torch.cat([recomputed, next_ids], dim=1)
        cache = KVCache(CONFIG, batch_size=2, max_seq_len=CONFIG.context_length)
        cached = prompt
        logits = model(prompt, cache)
        for _ in range(12):
            next_ids = logits[:, -1].argmax(-1, keepdim=True)
            cached = torch.cat([cached, next_ids], dim=1)
            logits = model(next_ids, cache)
    assert torch.equal(cached, recomputed)
    assert cache.position == 5 + 12


def test_cache_chunks_match_full_forward_and_reset(model: TransformerLM) -> None:
    ids = torch.randint(0, CONFIG.vocab_size, (1, 24))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(CONFIG, batch_size=1, max_seq_len=24)
        ends = (9, 10, 17, 24)
        chunks = [model(ids[:, start:end], cache) for start, end in zip((0, *ends[:-1]), ends, strict=True)]
        assert [tuple(chunk.shape) for chunk in chunks] == [(1, 1, CONFIG.vocab_size)] * 4  # no head over the rest
        torch.testing.assert_close(torch.cat(chunks, dim=1), full[:, [end - 1 for end in ends]], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="reset the cache"):
            model(ids[:, :1], cache)
        cache.reset()
        torch.testing.assert_close(model(ids[:, :6], cache), full[:, 5:6], atol=1e-5, rtol=1e-5)
        assert set(cache.qkv_weights) == set(range(CONFIG.num_layers))  # built once, reused by later steps
        changed = model.layers[0].attn.k_proj.weight
        original = changed.clone()
        changed.mul_(0.5)  # reset() must drop the concatenated weights made from the old values
        cache.reset()
        torch.testing.assert_close(model(ids[:, :6], cache), model(ids[:, :6])[:, -1:], atol=1e-5, rtol=1e-5)
        changed.copy_(original)
    with pytest.raises(ValueError, match="max_seq_len"):
        KVCache(CONFIG, batch_size=1, max_seq_len=CONFIG.context_length + 1)


def test_static_cache_steps_match_the_full_forward(model: TransformerLM) -> None:
    ids = torch.randint(0, CONFIG.vocab_size, (2, 20))
    chunks = ((0, 6), (6, 7), (7, 8), (8, 9), (9, 14), (14, 15), (15, 16), (16, 20))  # one-token steps between prompts
    with torch.no_grad():
        full = model(ids)
        cache = StaticKVCache(CONFIG, batch_size=2, max_seq_len=20)
        for start, end in chunks:
            torch.testing.assert_close(model(ids[:, start:end], cache), full[:, end - 1 : end], atol=1e-5, rtol=1e-5)
            assert cache.position == int(cache.position_tensor) == end
        cache.reset()
        assert cache.position == int(cache.position_tensor) == 0


def test_static_cache_step_reads_its_position_from_the_device_only(model: TransformerLM) -> None:
    """What a replayed CUDA graph needs: the one-token step gives the same logits whatever the host position says."""
    ids = torch.randint(0, CONFIG.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        cache = StaticKVCache(CONFIG, batch_size=1, max_seq_len=12)
        model(ids[:, :8], cache)
        for position in range(8, 12):
            cache.position = 0  # stale, as after graph replays that skip the Python
            torch.testing.assert_close(model(ids[:, position : position + 1], cache), full[:, position : position + 1],
                                       atol=1e-5, rtol=1e-5)
            assert int(cache.position_tensor) == position + 1
        cache.set_position(5)
        assert cache.position == int(cache.position_tensor) == 5


def test_static_cache_step_traces_as_one_graph(model: TransformerLM) -> None:
    """No host sync (.item(), data-dependent branches) in the one-token step: dynamo traces it whole, as a
    CUDA graph capture needs. backend="eager" only traces, and takes apply_rotary's real-arithmetic branch
    (the eager step multiplies complex numbers: no branch on values either); the CUDA capture itself
    needs a GPU (tests/sample)."""
    ids = torch.randint(0, CONFIG.vocab_size, (2, 9))
    tokens = ids[:, 8:9].clone()
    with torch.inference_mode():
        expected = model(ids)[:, 8]
        cache = StaticKVCache(CONFIG, batch_size=2, max_seq_len=12)
        model(ids[:, :8], cache)
        step = torch.compile(lambda: model(tokens, kv_cache=cache), backend="eager", fullgraph=True, dynamic=False)
        torch.testing.assert_close(step()[:, 0], expected, atol=1e-5, rtol=1e-5)
    assert int(cache.position_tensor) == 9


def test_decode_step_needs_a_static_cache_to_capture_and_room_to_step(random_lm) -> None:
    model = random_lm(context_length=16)
    with pytest.raises(ValueError, match="StaticKVCache"):
        DecodeStep(model, KVCache(model.config, 1, 4), 257, capture=True)
    cache = StaticKVCache(model.config, 1, 4)
    step = DecodeStep(model, cache, 257, capture=False)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
        assert step(torch.tensor([4])).shape == (1, 257)
        with pytest.raises(ValueError, match="cache is full"):
            step(torch.tensor([5]))


def test_a_failed_capture_warns_and_decodes_eagerly(random_lm, monkeypatch) -> None:
    model = random_lm(context_length=16)
    prompt = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        reference = model(torch.tensor([[1, 2, 3, 4]]))[0, -1]

    def warm_up_then_fail(step: DecodeStep, position: int) -> None:
        step._run()  # advances the cache, as the real warm-up does before capturing
        try:
            raise RuntimeError("operation not permitted when stream is capturing")
        except RuntimeError:  # as torch.cuda.graph's exit raises when the capture inside it failed
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture") from None

    monkeypatch.setattr(DecodeStep, "_capture", warm_up_then_fail)
    cache = StaticKVCache(model.config, 1, 8)
    step = DecodeStep(model, cache, 257, capture=True)
    with torch.inference_mode():
        model(prompt, kv_cache=cache)
        with pytest.warns(UserWarning, match="during capture; caused by: operation not permitted .*decoding eagerly"):
            logits = step(torch.tensor([4]))
        torch.testing.assert_close(logits[0], reference, atol=1e-5, rtol=1e-5)
        assert not step.capture and cache.position == int(cache.position_tensor) == 4
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            step(torch.tensor([5]))  # no second attempt, no second warning
    assert cache.position == 5


@pytest.mark.cuda
def test_captured_decoding_on_a_gpu_gives_the_ids_of_recomputing_the_prefix(random_lm) -> None:
    model = random_lm(context_length=64).cuda()
    prompts = torch.tensor([[5, 80, 33, 120, 7, 99, 1], [200, 13, 13, 42, 250, 66, 8]], device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captured = generate_tokens(model, prompts, max_new_tokens=57)  # static_decode defaults to on for CUDA
    assert not [warning for warning in caught if "CUDA graph" in str(warning.message)]  # no fallback
    eager = generate_tokens(model, prompts, max_new_tokens=57, static_decode=False)
    recomputed = generate_tokens(model, prompts, max_new_tokens=57, use_cache=False)
    assert torch.equal(captured, eager) and torch.equal(captured, recomputed)
    cache = StaticKVCache(model.config, 2, 12, device="cuda")
    step = DecodeStep(model, cache, 257, capture=True)
    with torch.inference_mode():
        model(prompts, kv_cache=cache)
        first = step(torch.tensor([3, 4], device="cuda")).clone()
        assert step.graph is not None and cache.position == int(cache.position_tensor) == 8
        cache.set_position(7)  # replay the same position: the same logits
        torch.testing.assert_close(step(torch.tensor([3, 4], device="cuda")), first)
        cache.reset()  # drops the cache's stacked q/k/v weights; the graph keeps reading them
        overwrite = [torch.full_like(weight, 1e4) for weight in step.graph_inputs]
        cache.set_position(7)
        torch.testing.assert_close(step(torch.tensor([3, 4], device="cuda")), first)
    held = {weight.data_ptr() for weight in step.graph_inputs}
    assert len(held) == model.config.num_layers and not held & {block.data_ptr() for block in overwrite}


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_product_equals_the_matmul_and_is_set_only_while_decoding_on_the_cpu(threads: int) -> None:
    """split_linear gives x W^T for every shape (few rows split, many rows / odd widths / autograd plain), and
    decoding() installs it for `linear` only on the CPU, only inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        for shape, out_features in (((1, 1, 64), 96), ((3, 5, 64), 96), ((2, 40, 64), 96), ((1, 1, 64), 97)):
            x, weight = torch.randn(shape, generator=generator), torch.randn(out_features, 64, generator=generator)
            with torch.no_grad():
                torch.testing.assert_close(split_linear(x, weight), x @ weight.t())
    finally:
        torch.set_num_threads(previous)
    assert PRODUCTS.few_rows is None
    with decoding(torch.device("cpu")):
        assert PRODUCTS.few_rows is split_linear
        with decoding(torch.device("meta")):
            assert PRODUCTS.few_rows is split_linear  # not the CPU: left as it was
    assert PRODUCTS.few_rows is None
    x = torch.randn(2, 8, requires_grad=True)
    with decoding(torch.device("cpu")):
        linear(x, torch.randn(4, 8)).sum().backward()  # with autograd on, the plain product
    assert x.grad is not None


def test_decoding_on_two_threads_with_the_split_product_gives_the_ids_of_one_thread(model: TransformerLM) -> None:
    """The split product (taken with 2+ threads) decodes the same greedy and seeded ids as the plain matmul (1 thread)."""
    prompt = torch.randint(0, CONFIG.vocab_size, (3, 6), generator=torch.Generator().manual_seed(1))

    def decode_both() -> tuple[torch.Tensor, torch.Tensor]:
        greedy = generate_tokens(model, prompt, max_new_tokens=20)
        sampled = generate_tokens(model, prompt, max_new_tokens=20, temperature=1.0,
                                  generator=torch.Generator().manual_seed(2))
        return greedy, sampled

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        plain = decode_both()
        torch.set_num_threads(2)
        split = decode_both()
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(split[0], plain[0]) and torch.equal(split[1], plain[1])
