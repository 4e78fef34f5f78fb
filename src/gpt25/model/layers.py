"""Hand-written building blocks: Linear, Embedding, RMSNorm, LayerNorm, the MLP (SwiGLU, GELU or ReLU²),
rotary embedding, silu, gelu_tanh, softmax. Manual: docs/model.md

Initialisation lives in each module's `reset_parameters()` so a model built on the meta device can
be materialised (`to_empty`) and then initialised in place.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch
from torch import nn


class Products(threading.local):
    """How `linear` multiplies in this thread: `few_rows(x, W)` instead of the matmul while the engine sets it."""

    few_rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


PRODUCTS = Products()


def init_normal_(tensor: torch.Tensor, std: float | None, fan_std: float, cutoff: float = 3.0) -> None:
    """Fill `tensor` in place: with `std` None (the recipe), N(0, fan_std^2) truncated to +-cutoff fan_std
    (inverse-CDF sampling); with a number (GPT-2), plain N(0, std^2)."""
    if tensor.is_meta:  # nothing to fill; and erfinv's meta kernel would import torch._dynamo (10+ s)
        return
    with torch.no_grad():
        if std is not None:
            tensor.normal_(0.0, std)
            return
        # Uniform in [2 cdf(-cutoff) - 1, 2 cdf(cutoff) - 1] = +-erf(cutoff / sqrt 2), mapped back through erfinv.
        bound = math.erf(cutoff / math.sqrt(2.0))
        tensor.uniform_(-bound, bound)
        tensor.erfinv_().mul_(fan_std * math.sqrt(2.0))
        tensor.clamp_(-cutoff * fan_std, cutoff * fan_std)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W^T for x (..., in_features) and W (out_features, in_features)."""
    # is_compiling first: a compiled graph never reads the thread-local (nor guards on it).
    if not torch.compiler.is_compiling() and PRODUCTS.few_rows is not None:
        return PRODUCTS.few_rows(x, weight)
    return torch.matmul(x, weight.t())


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU in GPT-2's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax along `dim`; the max is subtracted first so large inputs (1e4) do not overflow."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    exponentials = torch.exp(shifted)
    return exponentials / exponentials.sum(dim=dim, keepdim=True)


class Linear(nn.Module):
    """y = x W^T (+ b); `weight` is (out_features, in_features), initialised by `init_normal_` (`std` 0: zeros)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, std: float | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.std = std
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self.weight, self.std, fan_std=math.sqrt(2.0 / sum(self.weight.shape)))  # 2 / (in + out)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear(x, self.weight)  # (..., in_features) -> (..., out_features)
        return out if self.bias is None else out + self.bias


class Embedding(nn.Module):
    """Lookup table `weight` (num_embeddings, embedding_dim), initialised by `init_normal_` with fan_std 1."""

    def __init__(self, num_embeddings: int, embedding_dim: int, std: float | None = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.std = std
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_normal_(self.weight, self.std, fan_std=1.0)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # (...) int -> (..., embedding_dim)
        return self.weight[token_ids]


class Norm(nn.Module):
    """What RMSNorm and LayerNorm share: the gain `weight` (d_model,) and, when the class `has_bias`, a `bias`."""

    has_bias = False

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(d_model, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(d_model, device=device, dtype=dtype)) if self.has_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()


class RMSNorm(Norm):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 and returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., d_model) -> (..., d_model); float32 because bfloat16's 8-bit mantissa would round the mean of
        # squares of a wide row; the .float() is free when x is already float32.
        x_float = x.float()
        inverse_rms = torch.rsqrt(x_float.square().mean(dim=-1, keepdim=True) + self.eps)
        return (x_float * inverse_rms).to(x.dtype) * self.weight.to(x.dtype)


class LayerNorm(Norm):
    """(x - mean(x)) / sqrt(var(x) + eps) * weight + bias, statistics in float32, returned in the input dtype."""

    has_bias = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., d_model) -> (..., d_model); the biased variance, as GPT-2 and torch.nn.LayerNorm use
        x_float = x.float()
        centred = x_float - x_float.mean(dim=-1, keepdim=True)
        inverse_std = torch.rsqrt(centred.square().mean(dim=-1, keepdim=True) + self.eps)
        return (centred * inverse_std).to(x.dtype) * self.weight.to(x.dtype) + self.bias.to(x.dtype)


class MLP(nn.Module):
    """Feed-forward (..., d_model) -> (..., d_ff) -> (..., d_model) of `kind`: swiglu, the recipe's gated
    w2(silu(w1 x) * w3 x); gelu, GPT-2's w2(gelu_tanh(w1 x)); relu2, modded-nanogpt's w2(relu(w1 x)^2), as
    cheap as GELU's and sparse. `std`/`output_std` initialise w1 (and w3) and w2 as Linear's."""

    def __init__(self, kind: str, d_model: int, d_ff: int, bias: bool = False, std: float | None = None,
                 output_std: float | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.kind = kind
        self.w1 = Linear(d_model, d_ff, bias, std, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, bias, output_std, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, bias, std, device=device, dtype=dtype) if kind == "swiglu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.w1(x)  # (..., d_ff)
        if self.kind == "swiglu":
            hidden = silu(hidden) * self.w3(x)
        elif self.kind == "gelu":
            hidden = gelu_tanh(hidden)
        else:
            hidden = hidden.clamp_min(0.0).square()
        return self.w2(hidden)  # (..., d_model)


class RotaryEmbedding(nn.Module):
    """RoFormer rotary position embedding's cos/sin tables (max_seq_len, d_k / 2), float32, not in the state dict:
    pair (x[2i], x[2i+1]) at a position turns by position * theta^(-2i/d_k) (`apply_rotary`)."""

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None) -> None:
        super().__init__()  # an even d_k is ModelConfig's to check
        self.theta = theta
        self.d_k = d_k
        self.max_seq_len = max_seq_len
        self.register_buffer("cos", torch.empty(max_seq_len, d_k // 2, device=device), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, d_k // 2, device=device), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.cos.is_meta:  # computed after to_empty(); meta arithmetic would import torch._dynamo
            return
        device = self.cos.device
        exponents = torch.arange(0, self.d_k, 2, device=device, dtype=torch.float64) / self.d_k
        inverse_frequencies = self.theta**-exponents  # (d_k / 2,)
        positions = torch.arange(self.max_seq_len, device=device, dtype=torch.float64)
        angles = torch.outer(positions, inverse_frequencies)  # (max_seq_len, d_k / 2)
        self.cos.copy_(torch.cos(angles))  # buffers: no autograd to keep out
        self.sin.copy_(torch.sin(angles))

    def _apply(self, fn, recurse: bool = True):
        """Move the tables with the module but keep them float32: `model.to(torch.bfloat16)` would round
        every angle's cos/sin to 8 bits, which training (autocast) never saw. They are recomputed."""
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:
            self.cos = torch.empty_like(self.cos, dtype=torch.float32)
            self.sin = torch.empty_like(self.sin, dtype=torch.float32)
            self.reset_parameters()
        return self


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (..., d_k) by angles given as cos/sin (..., d_k / 2), broadcastable; computed in
    float32, returned in x's dtype."""
    x_float = x.float()
    if torch.compiler.is_compiling():
        # Inductor has no complex code generation; in real arithmetic the rotation fuses into one kernel.
        even, odd = x_float.unflatten(-1, (-1, 2)).unbind(-1)  # (..., d_k / 2) each
        cos, sin = cos.float(), sin.float()
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (..., d_k / 2, 2)
        return rotated.flatten(-2).to(x.dtype)
    if x_float.stride(-1) != 1 or any(stride % 2 for stride in x_float.stride()[:-1]):
        x_float = x_float.contiguous()
    # Pair (x[2i], x[2i+1]) as the complex x[2i] + i x[2i+1], times cos + i sin: one complex multiply (one kernel
    # forward, one backward) instead of six real ones in eager mode.
    pairs = torch.view_as_complex(x_float.unflatten(-1, (-1, 2)))  # (..., d_k / 2) complex
    rotation = torch.complex(cos.float(), sin.float())
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)
