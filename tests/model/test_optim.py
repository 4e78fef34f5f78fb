"""gpt25.optim: cross entropy, AdamW against torch.optim.AdamW, the cosine schedule and gradient clipping."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, clip_grad_norm, cosine_lr, cross_entropy

CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=48)


def test_cross_entropy_matches_torch_with_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 50, requires_grad=True)
    targets = torch.randint(0, 50, (3, 5))
    loss = cross_entropy(logits, targets)
    (ours,) = torch.autograd.grad(loss, logits)
    expected = F.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1))
    (reference,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours, reference)


def test_cross_entropy_ignore_index_and_upstream_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 11, requires_grad=True)
    targets = torch.tensor([1, -100, 3, 4, -100, 10, 0, 2])
    loss = 3.0 * cross_entropy(logits, targets, ignore_index=-100)
    (ours,) = torch.autograd.grad(loss, logits)
    expected = 3.0 * F.cross_entropy(logits, targets, ignore_index=-100)
    (reference,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ours, reference)
    assert ours[1].abs().max() == 0


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    logits = torch.tensor([[1e4, 0.0, -1e4], [5e4, 5e4, 0.0]])
    targets = torch.tensor([0, 1])
    loss = cross_entropy(logits, targets)
    assert torch.isfinite(loss)
    # float32 spacing near 5e4 is 0.004, so only that much of log(2) survives the subtraction.
    assert loss.item() == pytest.approx(math.log(2) / 2, abs=4e-3)


def test_cross_entropy_bf16_logits_computed_in_float32() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 1000).bfloat16().requires_grad_()
    targets = torch.randint(0, 1000, (4,))
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), targets))
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


def test_cross_entropy_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="vocab dim"):
        cross_entropy(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def train_trajectory(optimizer_class, steps: int = 100) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = TransformerLM(CONFIG)
    optimizer = optimizer_class(
        parameter_groups(model, weight_decay=0.1), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1
    )
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, CONFIG.vocab_size, (4, CONFIG.context_length + 1), generator=data)
        optimizer.zero_grad()
        cross_entropy(model(ids[:, :-1]), ids[:, 1:]).backward()
        optimizer.step()
    return [parameter.detach().clone() for parameter in model.parameters()]


def test_adamw_matches_torch_over_100_steps() -> None:
    ours = train_trajectory(AdamW)
    reference = train_trajectory(torch.optim.AdamW)
    worst = max((a - b).abs().max().item() for a, b in zip(ours, reference, strict=True))
    assert worst < 1e-6


def test_adamw_single_step_formula_and_state_round_trip() -> None:
    parameter = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = AdamW([parameter], lr=0.1, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.5)
    parameter.grad = torch.tensor([0.5, 0.25])
    optimizer.step()
    # Step 1: m_hat = g, v_hat = g^2, so the Adam update is lr * sign(g) (up to eps).
    expected = torch.tensor([1.0, -2.0]) * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([1.0, 1.0])
    torch.testing.assert_close(parameter.detach(), expected)
    restored = AdamW([torch.nn.Parameter(parameter.detach().clone())], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.state_dict()["state"][0]["step"] == 1
    torch.testing.assert_close(restored.state_dict()["state"][0]["exp_avg"], torch.tensor([0.05, 0.025]))


def test_cosine_lr_schedule() -> None:
    def schedule(step: int) -> float:
        return cosine_lr(step, max_lr=1.0, min_lr=0.1, warmup_steps=10, cosine_steps=110)

    assert schedule(0) == 0.0
    assert schedule(5) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)  # halfway through the decay
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == 0.1
    values = [schedule(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert cosine_lr(0, 1.0, 0.1, warmup_steps=0, cosine_steps=10) == 1.0
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine_lr(0, 1.0, 0.1, warmup_steps=10, cosine_steps=5)


def test_clip_grad_norm_scales_only_when_over() -> None:
    first, second = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    first.grad, second.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    norm = clip_grad_norm([first, second], max_norm=1.0)
    assert float(norm) == pytest.approx(5.0)
    scale = 1.0 / (5.0 + 1e-6)
    torch.testing.assert_close(first.grad, torch.tensor([3.0 * scale, 0.0]))
    torch.testing.assert_close(second.grad, torch.tensor([4.0 * scale]))
    first.grad, second.grad = torch.tensor([0.3, 0.0]), torch.tensor([0.4])
    assert float(clip_grad_norm([first, second], max_norm=1.0)) == pytest.approx(0.5)
    assert torch.equal(first.grad, torch.tensor([0.3, 0.0])) and torch.equal(second.grad, torch.tensor([0.4]))
