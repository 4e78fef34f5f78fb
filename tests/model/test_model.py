"""gpt25.model: each component against its formula, the full model's contract and bad input (caches: test_inference)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gpt25.model import ModelConfig, TransformerLM, causal_mask, parameter_groups
from gpt25.model.attention import MultiHeadSelfAttention, scaled_dot_product_attention
from gpt25.model.layers import MLP, Embedding, Linear, RMSNorm, RotaryEmbedding, apply_rotary, silu, softmax

CONFIG = ModelConfig(vocab_size=97, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=96)


@pytest.fixture
def model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(CONFIG).eval()


def test_linear_shape_and_truncated_init() -> None:
    torch.manual_seed(0)
    layer = Linear(300, 200)
    std = math.sqrt(2 / 500)
    assert layer.weight.shape == (200, 300)
    assert layer(torch.ones(5, 7, 300)).shape == (5, 7, 200)
    assert layer.weight.abs().max() <= 3 * std + 1e-7
    assert layer.weight.std().item() == pytest.approx(std * 0.986, rel=0.03)  # truncation shrinks std by 1.4%
    x = torch.randn(3, 300)
    torch.testing.assert_close(layer(x), x @ layer.weight.T)


def test_embedding_lookup_and_init() -> None:
    torch.manual_seed(0)
    embedding = Embedding(1000, 64)
    assert embedding.weight.abs().max() <= 3.0
    assert embedding.weight.std().item() == pytest.approx(0.986, rel=0.03)
    ids = torch.tensor([[3, 999], [0, 3]])
    out = embedding(ids)
    assert out.shape == (2, 2, 64)
    assert torch.equal(out[0, 0], embedding.weight[3]) and torch.equal(out[1, 1], embedding.weight[3])


def test_rmsnorm_formula_and_dtype() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 16))
    x = torch.randn(2, 3, 16)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    bf16_out = norm(x.bfloat16())
    assert bf16_out.dtype == torch.bfloat16
    torch.testing.assert_close(bf16_out.float(), expected, atol=0.05, rtol=0.02)
    assert torch.equal(RMSNorm(8).weight, torch.ones(8))


def test_silu_and_stable_softmax() -> None:
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(silu(x), x / (1 + torch.exp(-x)))
    big = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [0.0, 0.0, 0.0]])
    probabilities = softmax(big, dim=-1)
    assert torch.isfinite(probabilities).all()
    torch.testing.assert_close(probabilities, torch.softmax(big.double(), dim=-1).float())
    torch.testing.assert_close(softmax(big, dim=0).sum(0), torch.ones(3))


def test_swiglu_formula_and_names() -> None:
    torch.manual_seed(0)
    ffn = MLP("swiglu", 16, 40)
    assert set(ffn.state_dict()) == {"w1.weight", "w2.weight", "w3.weight"}
    assert ffn.w1.weight.shape == (40, 16) and ffn.w2.weight.shape == (16, 40) and ffn.w3.weight.shape == (40, 16)
    x = torch.randn(4, 16)
    a, b = x @ ffn.w1.weight.T, x @ ffn.w3.weight.T
    torch.testing.assert_close(ffn(x), (a * torch.sigmoid(a) * b) @ ffn.w2.weight.T)


def rotate(rope: RotaryEmbedding, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (..., seq, d_k) rotated to `positions` (seq,), as the attention rotates q and k."""
    return apply_rotary(x, rope.cos[positions], rope.sin[positions])


def test_rope_rotates_interleaved_pairs() -> None:
    d_k, theta = 8, 10000.0
    rope = RotaryEmbedding(theta, d_k, max_seq_len=16)
    x = torch.randn(2, 5, d_k)
    positions = torch.tensor([0, 1, 2, 7, 15])
    out = rotate(rope, x, positions)
    # Reference: pair (x[2i], x[2i+1]) as a complex number times exp(i * pos * theta^(-2i/d_k)).
    pairs = torch.view_as_complex(x.double().reshape(2, 5, d_k // 2, 2).contiguous())
    angles = positions[:, None].double() * theta ** (-torch.arange(0, d_k, 2).double() / d_k)
    expected = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).reshape(2, 5, d_k)
    torch.testing.assert_close(out, expected.float())
    assert "cos" not in rope.state_dict() and "sin" not in rope.state_dict()


def test_rope_scores_depend_only_on_offset() -> None:
    rope = RotaryEmbedding(10000.0, 16, max_seq_len=64)
    q, k = torch.randn(16), torch.randn(16)

    def score(query_position: int, key_position: int) -> torch.Tensor:
        rotated_q = rotate(rope, q[None, :], torch.tensor([query_position]))
        rotated_k = rotate(rope, k[None, :], torch.tensor([key_position]))
        return (rotated_q * rotated_k).sum()

    torch.testing.assert_close(score(10, 3), score(40, 33))


def test_manual_attention_matches_fused_with_leading_dims() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 4, 10, 8), torch.randn(2, 3, 4, 10, 8), torch.randn(2, 3, 4, 10, 8)
    mask = causal_mask(10, 10)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), expected, atol=1e-5, rtol=1e-5)
    random_mask = torch.rand(10, 10) > 0.5
    random_mask[:, 0] = True
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, random_mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=random_mask),
        atol=1e-5,
        rtol=1e-5,
    )


def test_attention_paths_and_fusion_agree() -> None:
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(32, 4, rope=RotaryEmbedding(10000.0, 8, 16))
    assert {name: tuple(p.shape) for name, p in attention.state_dict().items()} == {
        f"{name}.weight": (32, 32) for name in ("q_proj", "k_proj", "v_proj", "output_proj")
    }
    x = torch.randn(2, 12, 32)
    # by hand: separate projections, RoPE per head, the hand-written attention under a causal mask
    q, k, v = (proj(x).unflatten(-1, (4, 8)).transpose(1, 2) for proj in
               (attention.q_proj, attention.k_proj, attention.v_proj))  # (batch, heads, seq, head_dim)
    q, k = (rotate(attention.rope, t, torch.arange(12)) for t in (q, k))
    attended = scaled_dot_product_attention(q, k, v, causal_mask(12, 12)).transpose(1, 2).reshape(2, 12, 32)
    torch.testing.assert_close(attention(x), attention.output_proj(attended), atol=1e-5, rtol=1e-5)


def test_state_dict_names(model: TransformerLM) -> None:
    expected = {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"}
    for i in range(CONFIG.num_layers):
        expected |= {f"layers.{i}.ln1.weight", f"layers.{i}.ln2.weight"}
        expected |= {f"layers.{i}.attn.{name}_proj.weight" for name in ("q", "k", "v", "output")}
        expected |= {f"layers.{i}.ffn.w{j}.weight" for j in (1, 2, 3)}
    assert set(model.state_dict()) == expected
    assert model.lm_head.weight.data_ptr() != model.token_embeddings.weight.data_ptr()


def test_forward_is_causal_for_any_length(model: TransformerLM) -> None:
    ids = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.context_length))
    logits = model(ids)
    assert logits.shape == (2, CONFIG.context_length, CONFIG.vocab_size)
    changed = ids.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % CONFIG.vocab_size
    torch.testing.assert_close(model(changed)[:, :20], logits[:, :20])
    torch.testing.assert_close(model(ids[:, :7]), logits[:, :7], atol=1e-5, rtol=1e-5)


def test_parameter_counts_and_flops(model: TransformerLM) -> None:
    d, v, f, layers = CONFIG.d_model, CONFIG.vocab_size, CONFIG.d_ff, CONFIG.num_layers
    per_layer = 4 * d * d + 3 * d * f + 2 * d
    assert model.num_params() == 2 * v * d + layers * per_layer + d
    assert model.num_params(include_embeddings=False) == v * d + layers * per_layer + d
    non_embedding = model.num_params(include_embeddings=False)
    assert model.flops_per_token() == 6 * non_embedding + 12 * layers * d * CONFIG.context_length
    assert model.flops_per_token(seq_len=8) == 6 * non_embedding + 12 * layers * d * 8


def test_config_round_trip_and_frozen() -> None:
    assert ModelConfig.from_dict(CONFIG.to_dict()) == CONFIG
    assert CONFIG.to_dict()["rope_theta"] == 10000.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIG.d_model = 8  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**CONFIG.to_dict(), "dropout": 0.1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_heads": 5}, "divisible"),
        ({"d_model": 60, "num_heads": 4}, "even"),
        ({"vocab_size": 0}, "positive"),
        ({"num_layers": -1}, "positive"),
        ({"d_ff": 2.5}, "positive"),
        ({"rope_theta": 0.0}, "rope_theta"),
    ],
)
def test_config_validation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**CONFIG.to_dict(), **changes})


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([[1, 2, 97]]), "token ids"),
        (torch.tensor([[1, -1]]), "token ids"),
        (torch.zeros(1, 33, dtype=torch.long), "context_length"),
        (torch.zeros(1, 4), "int64"),
        (torch.zeros(4, dtype=torch.long), r"\(batch, seq\)"),
    ],
)
def test_bad_inputs_raise_value_error(model: TransformerLM, ids: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(ids)


def test_meta_build_then_init_weights() -> None:
    model = TransformerLM(CONFIG, device="meta")
    assert model.lm_head.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    reference = TransformerLM(CONFIG)
    torch.testing.assert_close(model.rope.cos, reference.rope.cos)
    assert torch.equal(model.ln_final.weight, torch.ones(CONFIG.d_model))
    std = math.sqrt(2 / (CONFIG.d_model + CONFIG.vocab_size))
    assert model.lm_head.weight.abs().max() <= 3 * std + 1e-7
    assert model.lm_head.weight.std().item() == pytest.approx(std, rel=0.1)
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))).all()


def test_rope_tables_stay_float32_when_the_model_is_cast(model: TransformerLM) -> None:
    reference_cos, reference_sin = model.rope.cos.clone(), model.rope.sin.clone()
    ids = torch.randint(0, CONFIG.vocab_size, (1, CONFIG.context_length))
    with torch.no_grad():
        reference = model(ids)
        model.to(torch.bfloat16)
        assert model.lm_head.weight.dtype == torch.bfloat16
        for rope in (model.rope, *(layer.attn.rope for layer in model.layers)):
            assert rope.cos.dtype == rope.sin.dtype == torch.float32
            assert torch.equal(rope.cos, reference_cos) and torch.equal(rope.sin, reference_sin)
        # bfloat16 weights and activations only: the logits stay within bfloat16's rounding
        torch.testing.assert_close(model(ids).float(), reference, atol=0.15, rtol=0.05)


def test_parameter_groups_skip_norms_and_embeddings(model: TransformerLM) -> None:
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): name for name, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay_names == {"token_embeddings.weight", "ln_final.weight"} | {
        f"layers.{i}.ln{j}.weight" for i in range(CONFIG.num_layers) for j in (1, 2)
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = parameter_groups(model, weight_decay=0.1, decay_all=True)
    assert len(everything["params"]) == len(list(model.parameters())) and everything["weight_decay"] == 0.1


def test_bf16_autocast_forward_backward(model: TransformerLM) -> None:
    ids = torch.randint(0, CONFIG.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_grow_vocab_appends_mean_rows_and_keeps_the_old_logits() -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=32))
    tokens = torch.tensor([[1, 7, 3]])
    before = model(tokens)
    model.grow_vocab(53)
    assert model.config.vocab_size == 53 and model.lm_head.weight.shape == (53, 16)
    torch.testing.assert_close(model.token_embeddings.weight[50:], model.token_embeddings.weight[:50].mean(0).expand(3, -1))
    torch.testing.assert_close(model(tokens)[..., :50], before)
    assert model(torch.tensor([[52]])).shape == (1, 1, 53)
    with pytest.raises(ValueError, match="cannot shrink"):
        model.grow_vocab(10)
