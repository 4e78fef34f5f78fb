"""gpt25.model: the GPT 2.5 decoder (Llama-style: RMSNorm, SwiGLU, RoPE, untied head) and GPT-2's
(LayerNorm, GELU, learned positions, biases, tied head), any mix of the two, written by hand.

The modules, each importing only those before it: `config` holds the hyper-parameters, `decoding`
the interface a decoding state (the KV caches of `gpt25.engine`) offers the model, `layers` the
elementary modules, `attention` the attention, `transformer` the block, full model, FLOP count and
weight-decay groups. Decoding itself lives outside the model, in `gpt25.engine`. The package exports
what the rest of gpt25 uses; the single components are imported from their modules.
"""

from gpt25.model.attention import causal_mask
from gpt25.model.config import ARCHITECTURES, ModelConfig
from gpt25.model.transformer import TransformerLM, parameter_groups

__all__ = ["ARCHITECTURES", "ModelConfig", "TransformerLM", "causal_mask", "parameter_groups"]
