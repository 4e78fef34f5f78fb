"""The model's hyper-parameters (`ModelConfig`), checked on construction and saved with every checkpoint, and the
named architectures (`ARCHITECTURES`), each component switchable on its own. Manual: docs/model.md
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

COMPONENT_CHOICES = {
    "norm": ("rmsnorm", "layernorm"),
    "mlp": ("swiglu", "gelu", "relu2"),
    "positions": ("rope", "learned"),
    "init": ("gpt25", "gpt2", "zero"),
}
# The components of each named architecture (`--arch`); bias, tie_embeddings and qk_norm are booleans,
# logit_softcap a number (0: off).
ARCHITECTURES = {
    "gpt25": {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "tie_embeddings": False,
              "init": "gpt25", "qk_norm": False, "logit_softcap": 0.0},
    "gpt2": {"norm": "layernorm", "mlp": "gelu", "positions": "learned", "bias": True, "tie_embeddings": True,
             "init": "gpt2", "qk_norm": False, "logit_softcap": 0.0},
    # The recipe with modded-nanogpt's changes: the one dict to edit when the ablation (docs/ablation.md) decides.
    # It keeps the changes that won beyond the seed spread (zero-initialised output projections; Muon and the
    # WSD schedule are training settings) and leaves out those that did not (ReLU², QK-norm, soft-capping).
    "gpt25x": {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "bias": False, "tie_embeddings": False,
               "init": "zero", "qk_norm": False, "logit_softcap": 0.0},
}


@dataclass(frozen=True)
class ModelConfig:
    """The defaults are the GPT 2.5 recipe, so a checkpoint whose meta predates a component loads as what it is."""

    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    rope_theta: float = 10000.0
    norm: str = "rmsnorm"  # rmsnorm | layernorm (gain and bias)
    mlp: str = "swiglu"  # swiglu | gelu (tanh approximation, GPT-2's) | relu2 (relu(x)^2, modded-nanogpt's)
    positions: str = "rope"  # rope | learned (absolute position embeddings added to the tokens)
    bias: bool = False  # biases in every Linear but the output head
    tie_embeddings: bool = False  # the output head is the token embedding
    init: str = "gpt25"  # gpt25 (truncated, fan-scaled) | gpt2 (N(0, 0.02), residual outputs / sqrt(2 layers))
    # | zero (gpt25's, but attention's and the MLP's output projections start at zero)
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before RoPE
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap); 0: off

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        for name, allowed in COMPONENT_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("bias", "tie_embeddings", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not self.logit_softcap >= 0:
            raise ValueError(f"ModelConfig.logit_softcap must be >= 0 (0: off), got {self.logit_softcap!r}")
        if self.rope_theta <= 0:
            raise ValueError(f"ModelConfig.rope_theta must be positive, got {self.rope_theta!r}")
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; pick a head count "
                             "that divides it")
        if self.positions == "rope" and self.head_dim % 2 != 0:
            raise ValueError(f"head dim d_model/num_heads={self.head_dim} must be even for RoPE; change num_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def components(self) -> dict:
        """The architecture choices (the keys of an ARCHITECTURES entry) and their values here."""
        return {name: getattr(self, name) for name in ARCHITECTURES["gpt25"]}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build from a dict (e.g. a checkpoint's meta); unknown keys are a ValueError, missing components the recipe's."""
        known = {field.name for field in fields(cls)}
        if unknown := set(data) - known:
            raise ValueError(f"unknown ModelConfig keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        values = dict(data)
        for name in ("rope_theta", "logit_softcap"):
            if name in values:
                values[name] = float(values[name])
        return cls(**values)

    @classmethod
    def preset(cls, arch: str, **shape) -> ModelConfig:
        """A config with the components of ARCHITECTURES[arch]; `shape` gives vocab_size, d_model, ... and may
        override single components; d_ff, when not given, is `default_d_ff`'s."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        values = {**ARCHITECTURES[arch], **shape}
        if not values.get("d_ff"):
            values["d_ff"] = default_d_ff(values["d_model"], values["mlp"])
        return cls(**values)


def default_d_ff(d_model: int, mlp: str) -> int:
    """The MLP width the recipes use: 4 d_model for GELU and ReLU^2; for SwiGLU 8/3 d_model (its three matrices
    then hold as many parameters as two of 4 d_model) rounded up to a multiple of 64, which GPU matmuls tile well."""
    if mlp in ("gelu", "relu2"):
        return 4 * d_model
    return -(-8 * d_model // 3 // 64) * 64
