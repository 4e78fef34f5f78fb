"""modded-nanogpt's components in gpt25: Muon, QK-norm, ReLU^2, zero-initialised projections, logit
soft-capping, the warmup-stable-decay schedule and --total_batch_tokens, each switchable alone."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gpt25.engine import generate_tokens
from gpt25.interop import hf_class
from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, Muon, cross_entropy, newton_schulz, wsd_lr
from gpt25.train.config import TrainConfig
from gpt25.train.trainer import build_optimizer, set_learning_rate

SHAPE = {"vocab_size": 61, "context_length": 24, "d_model": 32, "num_layers": 2, "num_heads": 4}
COMPONENTS = [{}, {"qk_norm": True}, {"mlp": "relu2"}, {"init": "zero"}, {"logit_softcap": 3.0},
              {"mlp": "relu2", "init": "zero", "qk_norm": True, "logit_softcap": 15.0, "positions": "learned"}]


@pytest.mark.parametrize("changes", COMPONENTS, ids=lambda changes: ",".join(changes) or "recipe")
def test_each_component_generates_the_same_with_and_without_the_cache(changes: dict) -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.preset("gpt25", **SHAPE, **changes)).eval()
    with torch.no_grad():  # moved off the initialisation, so zeroed projections take part too
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    prompt = torch.randint(0, SHAPE["vocab_size"], (2, 4))
    logits = model(prompt)
    assert logits.shape == (2, 4, SHAPE["vocab_size"]) and torch.isfinite(logits).all()
    if changes.get("logit_softcap"):
        assert logits.abs().max() < changes["logit_softcap"]
    cached = generate_tokens(model, prompt, max_new_tokens=10, use_cache=True)
    recomputed = generate_tokens(model, prompt, max_new_tokens=10, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_components_build_what_they_name() -> None:
    preset = ModelConfig.preset("gpt25x", **SHAPE)  # the changes the ablation kept: zero init beside the recipe
    assert (preset.init, preset.mlp, preset.qk_norm, preset.logit_softcap) == ("zero", "swiglu", False, 0.0)
    model = TransformerLM(ModelConfig.preset("gpt25", **SHAPE, mlp="relu2", init="zero", qk_norm=True))
    block = model.layers[0]
    assert model.config.d_ff == 4 * SHAPE["d_model"] and block.attn.q_norm is not None
    assert not block.attn.output_proj.weight.any() and not block.ffn.w2.weight.any()
    assert block.attn.q_proj.weight.std() > 0.05  # only the output projections start at zero
    x = torch.tensor([-2.0, 0.5, 3.0])
    block.ffn.w1.weight.data, block.ffn.w2.weight.data = torch.eye(3), torch.eye(3)
    torch.testing.assert_close(type(block.ffn).forward(block.ffn, x), torch.tensor([0.0, 0.25, 9.0]))
    with pytest.raises(ValueError, match="logit_softcap"):
        ModelConfig.preset("gpt25", **SHAPE, logit_softcap=-1.0)


def test_export_refuses_naming_the_component() -> None:
    for changes, named in (({"qk_norm": True}, "qk_norm=True"), ({"mlp": "relu2"}, "mlp=relu2"),
                           ({"logit_softcap": 30.0}, "logit_softcap=30.0")):
        with pytest.raises(ValueError, match=named):
            hf_class(ModelConfig.preset("gpt25", **SHAPE, **changes))
    assert hf_class(ModelConfig.preset("gpt25", **SHAPE, init="zero")) == "LlamaForCausalLM"


def test_newton_schulz_orthogonalises() -> None:
    torch.manual_seed(0)
    for shape in ((16, 48), (48, 16), (32, 32)):
        singular = torch.linalg.svdvals(newton_schulz(torch.randn(shape) * 7))
        assert singular.min() > 0.5 and singular.max() < 1.3, shape


def test_muon_step_follows_its_formula_and_adamw_takes_the_rest() -> None:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.preset("gpt25", **SHAPE))
    groups = parameter_groups(model, 0.1, muon=True)
    hidden = groups[0]["params"]
    assert groups[0]["muon"] and len(hidden) == 2 * 7  # q, k, v, output, w1, w2, w3 per block
    assert all(p.dim() == 2 for p in hidden)
    assert all(p is not model.lm_head.weight and p is not model.token_embeddings.weight for p in hidden)
    optimizer = Muon(groups, lr=1e-3, muon_lr=0.05, momentum=0.9, weight_decay=0.1)
    weight = model.layers[0].ffn.w1.weight  # (d_ff, d_model): tall, lr scaled by sqrt(rows / cols)
    before, grads = weight.detach().clone(), []
    for _ in range(2):
        inputs = torch.randint(0, SHAPE["vocab_size"], (2, 8))
        cross_entropy(model(inputs), inputs).backward()
        grads.append(weight.grad.clone())
        optimizer.step()
        optimizer.zero_grad()
    expected, momentum = before, torch.zeros_like(before)
    for grad in grads:
        momentum = 0.9 * momentum + 0.1 * grad
        update = newton_schulz(0.1 * grad + 0.9 * momentum)
        expected = expected * (1 - 0.05 * 0.1) - 0.05 * math.sqrt(weight.shape[0] / weight.shape[1]) * update
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-5, atol=1e-6)
    assert optimizer.state[model.lm_head.weight]["step"] == 2  # the head stays on AdamW


def train_steps(optimizer: AdamW, model: TransformerLM, seeds: range) -> None:
    for seed in seeds:
        set_learning_rate(optimizer, 1e-2 * (seed + 1) / 10)
        inputs = torch.randint(0, SHAPE["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(seed))
        cross_entropy(model(inputs), inputs).backward()
        optimizer.step()
        optimizer.zero_grad()


def test_muon_state_resumes_exactly() -> None:
    config = TrainConfig(optimizer="muon", lr=1e-2, muon_lr=0.03)
    torch.manual_seed(0)
    straight = TransformerLM(ModelConfig.preset("gpt25", **SHAPE))
    resumed = TransformerLM(ModelConfig.preset("gpt25", **SHAPE))
    resumed.load_state_dict(straight.state_dict())
    first = build_optimizer(straight, config)
    assert first.param_groups[0]["lr_ratio"] == pytest.approx(3.0)
    train_steps(first, straight, range(3))
    second = build_optimizer(resumed, config)
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # as from a file: no tensor shared
    resumed.load_state_dict(straight.state_dict())
    train_steps(first, straight, range(3, 6))
    train_steps(second, resumed, range(3, 6))
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert second.param_groups[0]["lr"] == pytest.approx(3 * 1e-2 * 6 / 10)


def test_wsd_holds_the_peak_then_decays_linearly() -> None:
    values = [wsd_lr(step, 1.0, 0.1, 2, 10) for step in range(12)]
    assert values == pytest.approx([0, 0.5, 1, 1, 1, 1, 1, 1 - 0.9 / 4, 1 - 0.9 / 2, 1 - 0.9 * 3 / 4, 0.1, 0.1])


def test_total_batch_tokens_sets_the_accumulation() -> None:
    config = TrainConfig(batch_size=4, context_length=32, total_batch_tokens=1024)
    assert config.accumulation_for(1) == 8 and config.accumulation_for(4) == 2
    with pytest.raises(ValueError, match="use 768 or 1,152"):
        config.accumulation_for(3)
    assert TrainConfig(grad_accum_steps=3).accumulation_for(8) == 3
