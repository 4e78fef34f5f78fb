"""gpt25.model: the GPT 2.5 decoder (Llama-style: RMSNorm, SwiGLU, RoPE, untied head), written by hand.

`config` holds the hyper-parameters, `layers` the elementary modules, `attention` the attention and
the KV caches, `transformer` the block, full model, FLOP count and weight-decay groups.
"""

from gpt25.model.attention import (
    KVCache,
    MultiHeadSelfAttention,
    StaticKVCache,
    causal_mask,
    scaled_dot_product_attention,
)
from gpt25.model.layers import (
    Embedding,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    linear,
    silu,
    softmax,
    trunc_normal_,
)
from gpt25.model.config import ModelConfig
from gpt25.model.transformer import TransformerBlock, TransformerLM, parameter_groups

__all__ = [
    "Embedding",
    "KVCache",
    "Linear",
    "ModelConfig",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "StaticKVCache",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "causal_mask",
    "linear",
    "parameter_groups",
    "scaled_dot_product_attention",
    "silu",
    "softmax",
    "trunc_normal_",
]
