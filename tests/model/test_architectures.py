"""GPT-2's components and every mix of them with the recipe's: formulas, presets, counts, groups, vocab growth."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gpt25.model import ARCHITECTURES, ModelConfig, TransformerLM, parameter_groups
from gpt25.model.layers import MLP, LayerNorm, gelu_tanh

SHAPE = dict(vocab_size=61, context_length=16, d_model=32, num_layers=2, num_heads=4)
# Every combination of the five components (init follows the norm, so both inits are covered).
COMBINATIONS = [
    dict(norm=norm, mlp=mlp, positions=positions, bias=bias, tie_embeddings=tie, init="gpt2" if norm == "layernorm"
         else "gpt25")
    for norm, mlp, positions, bias, tie in itertools.product(
        ("rmsnorm", "layernorm"), ("swiglu", "gelu"), ("rope", "learned"), (False, True), (False, True))
]


def gpt2_config(**changes) -> ModelConfig:
    return ModelConfig.preset("gpt2", **{**SHAPE, **changes})


def test_layernorm_matches_the_formula_in_float32() -> None:
    torch.manual_seed(0)
    norm = LayerNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
        norm.bias.copy_(torch.linspace(-1.0, 1.0, 8))
    x = torch.randn(3, 5, 8) * 4 + 2
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    expected = (x - mean) / torch.sqrt(variance + 1e-5) * norm.weight + norm.bias
    torch.testing.assert_close(norm(x), expected)
    half = norm(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), expected, atol=0.1, rtol=0.02)
    assert [name for name, _ in norm.named_parameters()] == ["weight", "bias"]


def test_gelu_tanh_form_and_mlp() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(gelu_tanh(x), expected)
    torch.testing.assert_close(gelu_tanh(x), torch.nn.functional.gelu(x, approximate="tanh"))
    assert gelu_tanh(torch.tensor([1.0])).item() == pytest.approx(0.841192, abs=1e-6)
    mlp = MLP("gelu", 6, 24, bias=True)
    y = torch.randn(2, 6)
    torch.testing.assert_close(mlp(y), gelu_tanh(y @ mlp.w1.weight.T + mlp.w1.bias) @ mlp.w2.weight.T + mlp.w2.bias)


def test_preset_parameter_counts_on_the_meta_device() -> None:
    shape = dict(vocab_size=50257, context_length=1024, d_model=768, num_layers=12, num_heads=12)
    with torch.device("meta"):
        gpt2 = TransformerLM(ModelConfig.preset("gpt2", **shape))
        gpt25 = TransformerLM(ModelConfig.preset("gpt25", **shape))
    assert gpt2.config.d_ff == 3072 and gpt25.config.d_ff == 2048
    assert gpt2.num_params() == 124_439_808
    # Untied head (+vocab*d), no position table or biases (-context*d, -biases), 3 x 2048 SwiGLU matrices.
    assert gpt25.num_params() == 2 * 50257 * 768 + 12 * (4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768) + 768
    assert gpt2.num_params(include_embeddings=False) == 124_439_808 - 50257 * 768 - 1024 * 768
    # The tied head is a matmul all the same: counted in the FLOPs once.
    assert gpt2.flops_per_token() == 6 * (85_056_000 + 50257 * 768) + 12 * 12 * 768 * 1024


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    model = TransformerLM(gpt2_config(d_model=256, num_layers=8, vocab_size=4000, context_length=256))
    assert model.token_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.position_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.layers[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.02)
    residual = 0.02 / math.sqrt(2 * 8)
    assert model.layers[3].attn.output_proj.weight.std().item() == pytest.approx(residual, rel=0.03)
    assert model.layers[3].ffn.w2.weight.std().item() == pytest.approx(residual, rel=0.03)
    assert model.layers[0].ffn.w1.bias.abs().sum().item() == 0.0
    assert model.lm_head is None and "lm_head.weight" not in model.state_dict()


@pytest.mark.parametrize("components", COMBINATIONS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_combination_trains_a_step_and_is_causal(components: dict) -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**SHAPE, d_ff=48, **components))
    ids = torch.randint(0, 61, (2, 10))
    logits = model(ids)
    assert logits.shape == (2, 10, 61)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 61
    torch.testing.assert_close(model(changed)[:, :6], logits[:, :6])
    logits.logsumexp(-1).mean().backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
    grouped = sum(len(group["params"]) for group in parameter_groups(model, 0.1))
    assert grouped == len(list(model.parameters()))


def test_parameter_groups_exempt_layernorm_biases_and_position_embeddings() -> None:
    model = TransformerLM(gpt2_config())
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    exempt = sorted(names[id(parameter)] for parameter in no_decay["params"])
    assert "position_embeddings.weight" in exempt and "token_embeddings.weight" in exempt
    assert {"layers.0.ln1.bias", "layers.0.attn.q_proj.bias", "layers.1.ffn.w2.bias", "ln_final.bias"} <= set(exempt)
    assert all(names[id(parameter)].endswith(".weight") and parameter.dim() == 2 for parameter in decay["params"])
    assert len(decay["params"]) == 2 * 6  # q, k, v, output, w1, w2 per layer; the tied head is the embedding


def test_grow_vocab_grows_a_tied_head_with_the_embedding() -> None:
    torch.manual_seed(0)
    model = TransformerLM(gpt2_config()).eval()
    ids = torch.randint(0, 61, (1, 7))
    before = model(ids)
    model.grow_vocab(64)
    after = model(ids)
    assert model.config.vocab_size == 64 and model.token_embeddings.weight.shape == (64, 32)
    torch.testing.assert_close(after[..., :61], before)
    torch.testing.assert_close(after[..., 61], after[..., 63])


def test_old_checkpoint_meta_without_components_is_the_recipe() -> None:
    old = dict(vocab_size=61, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=48, rope_theta=10000)
    config = ModelConfig.from_dict(old)
    assert config.components() == ARCHITECTURES["gpt25"]
    assert ModelConfig.from_dict(gpt2_config().to_dict()) == gpt2_config()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(norm="batchnorm"), "norm must be one of rmsnorm, layernorm"),
    (dict(bias="on"), "bias must be true or false"),
    (dict(positions="alibi"), "positions must be one of rope, learned"),
])
def test_component_validation(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**SHAPE, d_ff=48, **changes)
    with pytest.raises(ValueError, match="unknown architecture 'gpt3'"):
        ModelConfig.preset("gpt3", **SHAPE)
