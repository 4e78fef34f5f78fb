"""Loss, optimizers and schedules, written by hand: cross_entropy, AdamW, Muon, cosine_lr, wsd_lr, clip_grad_norm.

Manual: docs/model.md ("Optimizer, schedule, FLOPs")
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer


class _CrossEntropyFunction(torch.autograd.Function):
    """Mean cross entropy over (rows, vocab) logits with a hand-written backward: softmax - one_hot.

    The forward keeps exp(logits - max), so the backward is one scaled copy plus a scatter at the targets: five
    passes over the logits in all, where autograd through logsumexp and gather takes about nine."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        logits_float = logits.float()  # (rows, vocab); a no-op in float32
        maxes = logits_float.amax(dim=-1, keepdim=True)  # (rows, 1)
        exponentials = torch.sub(logits_float, maxes).exp_()  # (rows, vocab), each <= 1: no overflow
        sums = exponentials.sum(dim=-1)  # (rows,)
        log_normaliser = sums.log() + maxes.squeeze(-1)  # log-sum-exp, (rows,)
        losses = log_normaliser - logits_float.gather(-1, targets[:, None]).squeeze(-1)  # (rows,)
        if valid is None:
            count = torch.tensor(float(targets.numel()), device=logits.device)
            loss = losses.mean()
        else:
            count = valid.sum()
            loss = (losses * valid).sum() / count
        ctx.logits_dtype = logits.dtype
        ctx.save_for_backward(exponentials, sums, targets, valid, count)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        exponentials, sums, targets, valid, count = ctx.saved_tensors
        row_scale = (grad_loss / count).expand(targets.shape)  # (rows,) d loss / d row loss
        if valid is not None:
            row_scale = row_scale * valid
        grad_logits = exponentials * (row_scale / sums)[:, None]  # scale * softmax, (rows, vocab)
        grad_logits.scatter_add_(-1, targets[:, None], -row_scale[:, None])  # minus scale * one_hot
        return grad_logits.to(ctx.logits_dtype), None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Mean of -log softmax(logits)[target] over the positions whose target is not `ignore_index`.
    logits (..., vocab) any float dtype (computed in float32), targets (...) int."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} plus a vocab dim")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (rows, vocab)
    flat_targets = targets.reshape(-1).long()  # (rows,)
    valid = None
    if ignore_index is not None:
        valid = flat_targets != ignore_index
        flat_targets = torch.where(valid, flat_targets, 0)
        valid = valid.float()
    return _CrossEntropyFunction.apply(flat_logits, flat_targets, valid)


class AdamW(Optimizer):
    """Adam with decoupled weight decay: p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)."""

    # Loshchilov & Hutter with bias correction, in `torch.optim.AdamW`'s operation order, so the two trajectories agree
    # to float32 rounding; a group's tensors are updated together by `torch._foreach_*` ops (one kernel launch per op
    # and group on GPU instead of one per parameter).

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        # The settings are checked where a user gives them (RunConfig names the flag); here they are trusted.
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient; returns the closure's loss if given (torch's
        distributed checkpointing calls `step(closure=None)` to create the state it loads into)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict) -> None:
        """Advance each parameter's step, then update (param, grad, m, v) bucketed by (step, device, dtype), a
        bucket's tensors together by foreach ops."""
        buckets: dict[tuple, tuple[list, list, list, list]] = defaultdict(lambda: ([], [], [], []))
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["step"] = int(state["step"]) + 1
            bucket = buckets[(state["step"], param.device, param.dtype)]
            for values, item in zip(bucket, (param, param.grad, state["exp_avg"], state["exp_avg_sq"]), strict=True):
                values.append(item)
        for (step, _device, _dtype), tensors in buckets.items():
            self._update(group, step, *tensors)

    @staticmethod
    def _update(group: dict, step: int, params: list, grads: list, exp_avgs: list, exp_avg_sqs: list) -> None:
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if weight_decay != 0:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)  # m = beta1 m + (1 - beta1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)  # v = beta2 v + (1 - beta2) g^2
        step_size = lr / (1.0 - beta1**step)
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, math.sqrt(1.0 - beta2**step))
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominators, -step_size)


def newton_schulz(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix U V^T to matrix = U S V^T, roughly: modded-nanogpt's quintic iteration
    x <- a x + (b A + c A^2) x, A = x x^T, whose coefficients push every singular value into about [0.7, 1.2]
    in 5 steps (not exactly to 1, which trains as well and converges faster). (rows, cols) -> (rows, cols)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix.bfloat16() if matrix.is_cuda else matrix.float()  # bfloat16 is fast on GPUs, slow on CPUs
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.mT
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    for _ in range(steps):
        gram = x @ x.mT  # (rows, rows)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(matrix.dtype)


def orthogonalise(update: torch.Tensor) -> torch.Tensor:
    """newton_schulz of a matrix; an FSDP2-sharded DTensor is gathered whole, and each rank keeps its shard."""
    if not hasattr(update, "full_tensor"):
        return newton_schulz(update)
    from torch.distributed.tensor import distribute_tensor

    # every rank computes the same full result, so each takes its own shard without communicating
    return distribute_tensor(newton_schulz(update.full_tensor()), update.device_mesh, update.placements,
                             src_data_rank=None)


class Muon(AdamW):
    """Muon (modded-nanogpt's) for the groups marked {"muon": True} (the hidden 2-D matrices), AdamW for the rest.
    A Muon group's lr is its own; `lr_ratio` (its lr / the AdamW lr) lets one schedule drive both."""

    def __init__(self, params: Iterable, lr: float = 1e-3, muon_lr: float = 0.04, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)
        for group in self.param_groups:
            if group.setdefault("muon", False):
                group.update(lr=muon_lr, momentum=momentum, lr_ratio=muon_lr / lr if lr else 1.0)

    def _step_group(self, group: dict) -> None:
        if not group["muon"]:
            return super()._step_group(group)
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buffer = state["momentum_buffer"]
            buffer.lerp_(param.grad, 1.0 - momentum)
            update = orthogonalise(param.grad.lerp(buffer, momentum))  # Nesterov: a step past the momentum
            rows, cols = param.shape
            # NS(u) has singular values near 1, so its RMS per element is 1/sqrt(max(rows, cols)); the factor makes
            # it 1/sqrt(cols), the fan-in's, whatever the shape: a tall matrix is not updated less per element.
            param.mul_(1.0 - lr * weight_decay)
            param.add_(update, alpha=-lr * max(1.0, rows / cols) ** 0.5)
        return None


def learning_rate(schedule: str, step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    return (wsd_lr if schedule == "wsd" else cosine_lr)(step, max_lr, min_lr, warmup_steps, total_steps)


def wsd_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int,
           decay_fraction: float = 0.4) -> float:
    """Warmup-stable-decay (modded-nanogpt's): linear warmup, max_lr held, then a linear decay to min_lr over
    the last `decay_fraction` of the steps (at least those after warmup): most steps at the peak lr."""
    decay_start = max(warmup_steps, round(total_steps * (1.0 - decay_fraction)))
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    if step < decay_start:
        return max_lr
    return max_lr + (min_lr - max_lr) * (step - decay_start) / (total_steps - decay_start)


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, cosine_steps: int) -> float:
    """Linear warmup from 0 to max_lr, then a half cosine reaching min_lr at absolute step `cosine_steps`, min_lr after."""
    if warmup_steps < 0 or cosine_steps < warmup_steps:
        raise ValueError(f"need 0 <= warmup_steps <= cosine_steps, got warmup_steps={warmup_steps}, "
                         f"cosine_steps={cosine_steps}")
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step >= cosine_steps:
        return min_lr
    progress = (step - warmup_steps) / (cosine_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale all gradients by max_norm / (norm + 1e-6) when their global L2 norm exceeds max_norm; returns the norm
    before clipping as a 0-dim float32 tensor (no device sync; `float()` it to log)."""
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch._foreach_norm(grads)
    device = norms[0].device
    total = torch.linalg.vector_norm(torch.stack([norm.float().to(device) for norm in norms]))
    if hasattr(total, "full_tensor"):  # FSDP DTensor gradients: combine the shards' partial norms
        total = total.full_tensor()
    scale = torch.where(total > max_norm, max_norm / (total + 1e-6), torch.ones_like(total))
    if hasattr(grads[0], "full_tensor"):
        scale = float(scale)  # a DTensor gradient takes a Python scalar, not a plain tensor
    for grad in grads:
        grad.mul_(scale)
    return total
