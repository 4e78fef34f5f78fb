"""gpt25.sample: cache vs no-cache identity, top-k / top-p filters, end-of-text stop, streaming, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from gpt25.engine import apply_top_k, apply_top_p, generate_tokens
from gpt25.sample import generate

NEG_INF = float("-inf")
EOT = 256  # <|endoftext|> in the byte tokenizer


def test_greedy_with_cache_is_identical_to_recomputing_the_prefix(random_lm) -> None:
    model = random_lm(context_length=64)
    prompts = torch.tensor([[5, 80, 33, 120, 7, 99, 1], [200, 13, 13, 42, 250, 66, 8]])
    cached = generate_tokens(model, prompts, max_new_tokens=57, use_cache=True)
    recomputed = generate_tokens(model, prompts, max_new_tokens=57, use_cache=False)
    assert cached.shape == (2, 57)  # fills the context to its last position
    assert torch.equal(cached, recomputed)
    assert len(set(cached[0].tolist())) > 5  # a real sequence, not one repeated token


def test_greedy_generate_text_is_the_same_with_and_without_cache(byte_tokenizer, random_lm) -> None:
    model = random_lm(context_length=48)
    options = dict(max_new_tokens=30, temperature=0.0)
    assert generate(model, byte_tokenizer, "Hello", **options) == generate(
        model, byte_tokenizer, "Hello", use_cache=False, **options)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 57])
def test_static_decoding_gives_the_ids_of_recomputing_the_prefix(random_lm, max_new_tokens: int) -> None:
    model = random_lm(context_length=64)
    prompts = torch.tensor([[5, 80, 33, 120, 7, 99, 1], [200, 13, 13, 42, 250, 66, 8]])
    static = generate_tokens(model, prompts, max_new_tokens=max_new_tokens, static_decode=True)
    recomputed = generate_tokens(model, prompts, max_new_tokens=max_new_tokens, use_cache=False)
    assert torch.equal(static, recomputed)


def test_static_decoding_samples_like_the_dynamic_cache(byte_tokenizer, random_lm) -> None:
    model = random_lm()
    options = dict(max_new_tokens=25, temperature=1.0, top_p=0.9, top_k=50, num_samples=3, seed=11)
    static = generate(model, byte_tokenizer, "abc", static_decode=True, **options)
    assert static == generate(model, byte_tokenizer, "abc", static_decode=False, **options)
    assert len(set(static)) == 3


def test_decoding_attention_leaves_out_cudnn_and_restores_the_choice(random_lm) -> None:
    model = random_lm(context_length=16)
    backends = []
    model.register_forward_hook(lambda *args: backends.append((
        torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())))
    before = torch.backends.cuda.cudnn_sdp_enabled()
    for options in ({"use_cache": True}, {"use_cache": False}, {"static_decode": True}):
        generate_tokens(model, torch.tensor([[1, 2]]), max_new_tokens=3, **options)
    assert backends == [(False, True, True, True)] * 9  # prompt + 2 steps, three ways
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_top_k_keeps_the_k_largest_logits() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, 0.0, 9.0, 1.0, 1.0]])
    assert apply_top_k(logits, 2).tolist() == [[NEG_INF, 5.0, NEG_INF, 4.0, NEG_INF], [NEG_INF, NEG_INF, 9.0, 1.0, 1.0]]
    assert torch.equal(apply_top_k(logits, 5), logits)
    assert torch.equal(apply_top_k(logits, 100), logits)


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.4, {2}), (0.6, {2, 0}), (0.9, {2, 0, 3}), (0.99, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p: float, kept: set[int]) -> None:
    probabilities = torch.tensor([[0.3, 0.05, 0.5, 0.15]])  # unsorted on purpose
    filtered = apply_top_p(probabilities.log(), top_p)
    assert {index for index in range(4) if filtered[0, index] > NEG_INF} == kept
    kept_values = filtered[0, sorted(kept)]
    assert torch.allclose(kept_values, probabilities.log()[0, sorted(kept)])


def test_sampling_is_reproducible_with_a_seed_and_varies_without(byte_tokenizer, random_lm) -> None:
    model = random_lm()
    options = dict(max_new_tokens=20, temperature=1.0, top_p=1.0, num_samples=3)
    first = generate(model, byte_tokenizer, "abc", seed=7, **options)
    assert first == generate(model, byte_tokenizer, "abc", seed=7, **options)
    assert first != generate(model, byte_tokenizer, "abc", seed=8, **options)
    assert len(set(first)) == 3  # the batch rows sample independently


def test_top_k_one_samples_like_greedy(byte_tokenizer, random_lm) -> None:
    model = random_lm()
    greedy = generate(model, byte_tokenizer, "xyz", max_new_tokens=15, temperature=0.0)
    assert generate(model, byte_tokenizer, "xyz", max_new_tokens=15, temperature=1.5, top_k=1, seed=0) == greedy


def test_generation_stops_at_end_of_text_and_does_not_return_it(byte_tokenizer, bigram_lm, chain) -> None:
    model = bigram_lm(chain(ord("a"), ord("b"), ord("c"), EOT))
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    assert generate(model, byte_tokenizer, "a", max_new_tokens=50, num_samples=2, seed=0) == ["bc", "bc"]
    assert len(calls) <= 8  # stopped soon after end-of-text, long before 50 tokens


def test_rows_that_finish_early_are_padded_with_end_of_text(bigram_lm, chain) -> None:
    model = bigram_lm(chain(ord("a"), ord("b"), EOT) | chain(ord("x"), ord("y"), ord("z"), ord("x")))
    generated = generate_tokens(model, torch.tensor([[ord("a")], [ord("x")]]), max_new_tokens=5, eos_id=EOT)
    assert generated.tolist() == [[ord("b"), EOT, EOT, EOT, EOT], [ord("y"), ord("z"), ord("x"), ord("y"), ord("z")]]


def test_empty_prompt_starts_from_end_of_text(byte_tokenizer, bigram_lm, chain) -> None:
    model = bigram_lm(chain(EOT, ord("h"), ord("i"), EOT))
    assert generate(model, byte_tokenizer, "", temperature=0.0) == ["hi"]


def test_streamed_pieces_join_to_the_result_and_hold_back_partial_characters(byte_tokenizer, bigram_lm, chain) -> None:
    accent = "é".encode()  # two bytes: neither alone is a character
    model = bigram_lm(chain(ord("a"), accent[0], accent[1], ord("!"), EOT))
    pieces = []
    result = generate(model, byte_tokenizer, "a", on_token=lambda index, text: pieces.append((index, text)), seed=0)
    assert result == ["é!"]
    assert pieces == [(0, "é"), (0, "!")]


def test_padding_ids_beyond_the_tokenizer_are_never_produced(byte_tokenizer, bigram_lm) -> None:
    model = bigram_lm({ord("a"): {262: 40.0, ord("q"): 20.0}, ord("q"): {EOT: 40.0}}, vocab_size=264)
    assert generate(model, byte_tokenizer, "a", temperature=0.0) == ["q"]


def test_a_prompt_longer_than_the_context_is_cut_from_the_left(byte_tokenizer, bigram_lm, chain) -> None:
    model = bigram_lm(chain(ord("z"), ord("!"), EOT), context_length=16)
    with pytest.warns(UserWarning, match="keeping its last 12 tokens"):
        assert generate(model, byte_tokenizer, "y" * 40 + "z", max_new_tokens=4, temperature=0.0) == ["!"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, r"temperature must be >= 0 and finite \(0 means greedy\), got nan$"),
        ({"temperature": float("inf")}, r"temperature must be >= 0 and finite \(0 means greedy\), got inf$"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
        ({"max_new_tokens": 64}, "max_new_tokens \\(64\\) must fit the context of 64 tokens"),
    ],
)
def test_bad_settings_are_one_line_value_errors(byte_tokenizer, options, message, random_lm) -> None:
    with pytest.raises(ValueError, match=message) as error:
        generate(random_lm(context_length=64), byte_tokenizer, "hi", **options)
    assert "\n" not in str(error.value)


def test_defaults_are_the_recipes() -> None:
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(generate).parameters.items()}
    assert (defaults["temperature"], defaults["top_p"], defaults["max_new_tokens"]) == (0.8, 0.9, 50)
    assert math.isclose(defaults["top_p"], 0.9) and defaults["top_k"] is None


def test_sampling_draws_what_torch_multinomial_draws_for_the_same_seed() -> None:
    """The written-out exponential race takes the same tokens torch.multinomial took before it (seeded runs repeat)."""
    from gpt25.engine import sample_next_token, sampling_probabilities

    logits = torch.randn(200, 3, 500, generator=torch.Generator().manual_seed(0)) * 3
    for seed, rows in enumerate(logits):
        ours = sample_next_token(rows, temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(seed))
        probabilities = sampling_probabilities(rows, 0.8, None, 0.9)
        theirs = torch.multinomial(probabilities, 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("rows, width", [(1, 1), (1, 50257), (3, 7), (16, 4096)])
def test_cpu_noise_is_torchs_exponential_bit_for_bit(rows: int, width: int) -> None:
    """The vectorised CPU draw equals exponential_'s, from one generator per row and from a lone one, and leaves
    each generator where exponential_ leaves it."""
    from gpt25.engine import exponential_noise

    probabilities = torch.zeros(rows, width)
    for seed in range(5):
        per_row = [torch.Generator().manual_seed(seed + row) for row in range(rows)]
        theirs_per_row = [torch.Generator().manual_seed(seed + row) for row in range(rows)]
        expected = torch.cat([torch.empty(1, width).exponential_(1.0, generator=generator)
                              for generator in theirs_per_row])
        assert torch.equal(exponential_noise(probabilities, per_row), expected)
        lone, theirs_lone = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(exponential_noise(probabilities, [lone]),
                           torch.empty(rows, width).exponential_(1.0, generator=theirs_lone))
        for ours, theirs in zip([*per_row, lone], [*theirs_per_row, theirs_lone], strict=True):
            assert torch.equal(torch.rand(3, generator=ours), torch.rand(3, generator=theirs))
