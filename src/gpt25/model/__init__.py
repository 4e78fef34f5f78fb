"""gpt25.model: the GPT 2.5 decoder (Llama-style: RMSNorm, SwiGLU, RoPE, untied head) and GPT-2's
(LayerNorm, GELU, learned positions, biases, tied head), any mix of the two, written by hand.

Manual: docs/model.md
"""

from gpt25.model.attention import causal_mask
from gpt25.model.config import ARCHITECTURES, ModelConfig
from gpt25.model.transformer import TransformerLM, parameter_groups

__all__ = ["ARCHITECTURES", "ModelConfig", "TransformerLM", "causal_mask", "parameter_groups"]
