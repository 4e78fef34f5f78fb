"""gpt25.model: the GPT 2.5 decoder (Llama-style: RMSNorm, SwiGLU, RoPE, untied head) and GPT-2's
(LayerNorm, GELU, learned positions, biases, tied head), any mix of the two, written by hand.

The modules, each importing only those before it: `config` holds the hyper-parameters, `decoding`
the interface a decoding state (the KV caches of `gpt25.engine`) offers the model, `layers` the
elementary modules, `attention` the attention, `transformer` the block, full model, FLOP count and
weight-decay groups. Decoding itself lives outside the model, in `gpt25.engine`.
"""

from gpt25.model.attention import MultiHeadSelfAttention, causal_mask, scaled_dot_product_attention
from gpt25.model.config import ARCHITECTURES, ModelConfig
from gpt25.model.decoding import DecodingState
from gpt25.model.layers import (
    Embedding,
    GeluMLP,
    LayerNorm,
    Linear,
    ReLU2MLP,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    gelu_tanh,
    linear,
    silu,
    softmax,
    trunc_normal_,
)
from gpt25.model.transformer import TransformerBlock, TransformerLM, parameter_groups

__all__ = [
    "ARCHITECTURES",
    "DecodingState",
    "Embedding",
    "GeluMLP",
    "ReLU2MLP",
    "LayerNorm",
    "Linear",
    "ModelConfig",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "causal_mask",
    "gelu_tanh",
    "linear",
    "parameter_groups",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
    "trunc_normal_",
]
