"""The KV caches with GPT-2's learned positions, biases and tied head: cached decoding equals recomputation."""

from __future__ import annotations

import pytest
import torch

from gpt25.engine import KVCache, StaticKVCache
from gpt25.model import ModelConfig, TransformerLM

SHAPE = dict(vocab_size=97, context_length=32, d_model=64, num_layers=2, num_heads=4)
CONFIGS = {
    "gpt2": ModelConfig.preset("gpt2", **SHAPE),
    "gpt25-learned-bias-tied": ModelConfig.preset("gpt25", **SHAPE, positions="learned", bias=True, tie_embeddings=True),
}


@pytest.fixture(params=list(CONFIGS))
def model(request) -> TransformerLM:
    torch.manual_seed(0)
    model = TransformerLM(CONFIGS[request.param]).eval()
    with torch.no_grad():  # GPT-2's biases start at zero: make them matter
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("threads", [1, 2])
def test_greedy_decoding_with_cache_equals_recompute(model: TransformerLM, threads: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the products split over threads or not: the same tokens
    try:
        prompt = torch.randint(0, 97, (2, 5))
        with torch.no_grad():
            recomputed = prompt
            for _ in range(12):
                recomputed = torch.cat([recomputed, model(recomputed)[:, -1].argmax(-1, keepdim=True)], dim=1)
            cache = KVCache(model.config, batch_size=2, max_seq_len=32)
            cached, logits = prompt, model(prompt, cache)
            for _ in range(12):
                next_ids = logits[:, -1].argmax(-1, keepdim=True)
                cached = torch.cat([cached, next_ids], dim=1)
                logits = model(next_ids, cache)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(cached, recomputed)


def test_static_cache_step_reads_its_position_from_the_device_only(model: TransformerLM) -> None:
    """The learned position of a one-token step comes from position_tensor, as a replayed CUDA graph needs."""
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        full = model(ids)
        cache = StaticKVCache(model.config, batch_size=1, max_seq_len=12)
        torch.testing.assert_close(model(ids[:, :8], cache), full[:, 7:8], atol=1e-5, rtol=1e-5)
        for position in range(8, 12):
            cache.position = 0  # stale, as after graph replays that skip the Python
            torch.testing.assert_close(model(ids[:, position : position + 1], cache), full[:, position : position + 1],
                                       atol=1e-5, rtol=1e-5)


def test_static_cache_step_traces_as_one_graph(model: TransformerLM) -> None:
    ids = torch.randint(0, 97, (2, 9))
    tokens = ids[:, 8:9].clone()
    with torch.inference_mode():
        expected = model(ids)[:, 8]
        cache = StaticKVCache(model.config, batch_size=2, max_seq_len=12)
        model(ids[:, :8], cache)
        step = torch.compile(lambda: model(tokens, kv_cache=cache), backend="eager", fullgraph=True, dynamic=False)
        torch.testing.assert_close(step()[:, 0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
def test_captured_decoding_with_learned_positions_gives_the_ids_of_recomputing(model: TransformerLM) -> None:
    """The CUDA-graph step reads the learned position from the device: replays give recomputation's ids."""
    import warnings

    from gpt25.engine import generate_tokens

    model = model.cuda()
    prompts = torch.randint(0, 97, (2, 5), device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        captured = generate_tokens(model, prompts, max_new_tokens=27)  # static_decode defaults to on for CUDA
    assert not [warning for warning in caught if "CUDA graph" in str(warning.message)]  # no fallback
    assert torch.equal(captured, generate_tokens(model, prompts, max_new_tokens=27, use_cache=False))
