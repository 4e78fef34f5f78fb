"""Hugging Face interop: export a gpt25 model as a `transformers` folder (`export_hf`: LlamaForCausalLM
or GPT2LMHeadModel), read one back (`read_hf_folder`, `import_hf`) and upload a folder to the Hub.
Manual: docs/export.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt25.checkpoint import load_for_inference, read_weights, save_weights
from gpt25.files import atomic_folder
from gpt25.model import ARCHITECTURES, ModelConfig, TransformerLM
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import CHAT_SPECIAL_TOKENS, JINJA_CHAT_TEMPLATE, has_chat_tokens, reply_stop_ids
from gpt25.tokenizer.codec import END_OF_TEXT

RMS_NORM_EPS = 1e-5
LAYER_NORM_EPS = 1e-5
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
HF_TORCH_WEIGHTS_FILE = "pytorch_model.bin"
# The formats gpt25 reads: a transformers Llama folder, a transformers GPT-2 folder (its names without the
# "transformer." prefix) and the GPT 2.5 seed's checkpoints (gpt25.checkpoint_import).
LLAMA, GPT2, SEED = range(3)
LAYER_PREFIXES = ("model.layers.{i}.", "h.{i}.", "tblocks.{i}.")
# gpt25 name under layers.{i}. -> its name in each format under LAYER_PREFIXES; None: that format has none.
LAYER_NAMES = {
    "ln1.weight": ("input_layernorm.weight", "ln_1.weight", "norm_att.weight"),
    "ln1.bias": (None, "ln_1.bias", None),
    "attn.q_proj.weight": ("self_attn.q_proj.weight", None, "mhsa.Wq.weight"),
    "attn.k_proj.weight": ("self_attn.k_proj.weight", None, "mhsa.Wk.weight"),
    "attn.v_proj.weight": ("self_attn.v_proj.weight", None, "mhsa.Wv.weight"),
    "attn.c_attn.weight": (None, "attn.c_attn.weight", None),  # GPT-2's q, k and v in one
    "attn.c_attn.bias": (None, "attn.c_attn.bias", None),
    "attn.output_proj.weight": ("self_attn.o_proj.weight", "attn.c_proj.weight", "mhsa.Wo.weight"),
    "attn.output_proj.bias": (None, "attn.c_proj.bias", None),
    "ln2.weight": ("post_attention_layernorm.weight", "ln_2.weight", "norm_ff.weight"),
    "ln2.bias": (None, "ln_2.bias", None),
    "ffn.w1.weight": ("mlp.gate_proj.weight", "mlp.c_fc.weight", "ffn.w1"),
    "ffn.w1.bias": (None, "mlp.c_fc.bias", None),
    "ffn.w2.weight": ("mlp.down_proj.weight", "mlp.c_proj.weight", "ffn.w2"),
    "ffn.w2.bias": (None, "mlp.c_proj.bias", None),
    "ffn.w3.weight": ("mlp.up_proj.weight", None, "ffn.w3"),
}
GLOBAL_NAMES = {
    "token_embeddings.weight": ("model.embed_tokens.weight", "wte.weight", "emb.weight"),
    "position_embeddings.weight": (None, "wpe.weight", None),
    "ln_final.weight": ("model.norm.weight", "ln_f.weight", "norm.weight"),
    "ln_final.bias": (None, "ln_f.bias", None),
    "lm_head.weight": ("lm_head.weight", None, "linear.weight"),  # GPT-2's lm_head has no prefix: handled apart
}
GPT2_PREFIX = "transformer."
# ModelConfig field -> its config.json key, for export and import alike
LLAMA_CONFIG_KEYS = {"vocab_size": "vocab_size", "context_length": "max_position_embeddings", "d_model": "hidden_size",
                     "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads", "d_ff": "intermediate_size"}
GPT2_CONFIG_KEYS = {"vocab_size": "vocab_size", "context_length": "n_positions", "d_model": "n_embd",
                    "num_layers": "n_layer", "num_heads": "n_head"}  # n_inner may be null: 4 n_embd
GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation, under its two names
# What each transformers class needs of the model's components (the others it represents either way).
HF_CLASSES = {
    "LlamaForCausalLM": {name: ARCHITECTURES["gpt25"][name]
                         for name in ("norm", "mlp", "positions", "bias", "qk_norm", "logit_softcap")},
    "GPT2LMHeadModel": {name: ARCHITECTURES["gpt2"][name] for name in ("norm", "mlp", "positions", "qk_norm",
                                                                       "logit_softcap")},
}


def name_map(num_layers: int, source: int) -> dict[str, str]:
    """Every gpt25 state-dict name that the `source` format (LLAMA, GPT2 or SEED) holds -> its name there."""
    names = {ours: theirs[source] for ours, theirs in GLOBAL_NAMES.items() if theirs[source]}
    for index in range(num_layers):
        prefix = LAYER_PREFIXES[source].format(i=index)
        names.update({f"layers.{index}.{ours}": prefix + theirs[source]
                      for ours, theirs in LAYER_NAMES.items() if theirs[source]})
    return names


def hf_class(config: ModelConfig) -> str:
    """The transformers class that represents `config`'s architecture; a ValueError naming what does not fit."""
    misfits = {}
    for name, needs in HF_CLASSES.items():
        misfits[name] = [f"{component}={getattr(config, component)}" for component, value in needs.items()
                         if getattr(config, component) != value]
        if not misfits[name]:
            return name
    reasons = "; ".join(f"{name} needs {', '.join(f'{c}={v}' for c, v in HF_CLASSES[name].items())} "
                        f"(this model has {', '.join(misfit)})" for name, misfit in misfits.items())
    raise ValueError(f"no transformers class represents this architecture: {reasons}; train with --arch gpt25 "
                     "or --arch gpt2 to export")


def interleaved_to_halves(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder q/k output rows per head from pairs (2i, 2i+1) to halves (i, i + head_dim/2)."""
    # gpt25 rotates interleaved pairs, transformers rotates halves; permuting the rows of q and k alike
    # maps one onto the other exactly, since q.k is unchanged when both are permuted.
    d_out, d_in = weight.shape
    head_dim = d_out // num_heads
    # (heads, head_dim/2, 2, d_in) -> (heads, 2, head_dim/2, d_in)
    return weight.reshape(num_heads, head_dim // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def halves_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_halves`."""
    d_out, d_in = weight.shape
    head_dim = d_out // num_heads
    return weight.reshape(num_heads, 2, head_dim // 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """gpt25 weights -> transformers Llama weights (renamed, q/k rows permuted, contiguous)."""
    converted = {}
    for ours, theirs in name_map(config.num_layers, LLAMA).items():
        if ours not in state_dict:  # lm_head of a tied model: transformers ties it on loading
            continue
        tensor = state_dict[ours].detach()
        if ours.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            tensor = interleaved_to_halves(tensor, config.num_heads)
        converted[theirs] = tensor.contiguous().clone()
    return converted


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers Llama weights -> gpt25 weights; a tied checkpoint without lm_head reuses the embedding."""
    state = {}
    for ours, theirs in name_map(config.num_layers, LLAMA).items():
        if ours == "lm_head.weight" and config.tie_embeddings:
            continue
        if theirs == "lm_head.weight" and theirs not in hf_state:
            theirs = "model.embed_tokens.weight"
        if theirs not in hf_state:
            raise ValueError(f"the Hugging Face weights have no {theirs}; is this a Llama checkpoint?")
        tensor = hf_state[theirs]
        if ours.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
            tensor = halves_to_interleaved(tensor, config.num_heads)
        state[ours] = tensor.contiguous()
    return state


def to_gpt2_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """gpt25 weights -> GPT2LMHeadModel weights: renamed, Linear weights transposed, q/k/v fused into c_attn;
    a model without biases gets zero ones (the same function), a tied one no lm_head.weight (tied on loading)."""
    state = {name: tensor.detach() for name, tensor in state_dict.items()}
    for index in range(config.num_layers):
        prefix = f"layers.{index}.attn."
        state[f"{prefix}c_attn.weight"] = torch.cat([state[f"{prefix}{name}_proj.weight"] for name in "qkv"])
        if config.bias:
            state[f"{prefix}c_attn.bias"] = torch.cat([state[f"{prefix}{name}_proj.bias"] for name in "qkv"])
    converted = {}
    for ours, theirs in name_map(config.num_layers, GPT2).items():
        if ours not in state:  # a bias of a model without biases: (out_features,) zeros
            weight = state[ours.removesuffix("bias") + "weight"]
            converted[GPT2_PREFIX + theirs] = weight.new_zeros(weight.shape[0])
            continue
        tensor = state[ours]
        transposed = tensor.dim() == 2 and theirs.startswith("h.")  # Conv1D: (in, out)
        converted[GPT2_PREFIX + theirs] = (tensor.t() if transposed else tensor).contiguous().clone()
    if not config.tie_embeddings:
        converted["lm_head.weight"] = state["lm_head.weight"].contiguous().clone()
    return converted


def from_gpt2_state_dict(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel weights (with or without the "transformer." prefix; mask buffers ignored) -> gpt25's."""
    hf_state = {name.removeprefix(GPT2_PREFIX): tensor for name, tensor in hf_state.items()}
    state = {}
    for ours, theirs in name_map(config.num_layers, GPT2).items():
        if theirs not in hf_state:
            raise ValueError(f"the Hugging Face weights have no {theirs}; is this a GPT-2 checkpoint?")
        tensor = hf_state[theirs]
        state[ours] = (tensor.t() if tensor.dim() == 2 and theirs.startswith("h.") else tensor).contiguous()
    for index in range(config.num_layers):
        for kind in ("weight", "bias"):  # c_attn, transposed above: weight (3 d_model, d_model), bias (3 d_model,)
            fused = state.pop(f"layers.{index}.attn.c_attn.{kind}")
            for name, part in zip("qkv", fused.chunk(3), strict=True):
                state[f"layers.{index}.attn.{name}_proj.{kind}"] = part.contiguous()
    if not config.tie_embeddings:
        state["lm_head.weight"] = hf_state["lm_head.weight"].contiguous()
    return state


def shared_config(config: ModelConfig, eot_id: int | None, dtype: torch.dtype) -> dict:
    """The config.json entries LlamaForCausalLM and GPT2LMHeadModel share."""
    return {"tie_word_embeddings": config.tie_embeddings, "bos_token_id": eot_id, "eos_token_id": eot_id,
            "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True}


def gpt2_config(config: ModelConfig, eot_id: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """config.json for GPT2LMHeadModel (dropout 0: gpt25 trains without it)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        **{key: getattr(config, field) for field, key in GPT2_CONFIG_KEYS.items()},
        "n_inner": config.d_ff,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
    } | shared_config(config, eot_id, dtype)


def hf_config(config: ModelConfig, eot_id: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """config.json for LlamaForCausalLM; written for both transformers 4.x (rope_theta) and 5.x (rope_parameters)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **{key: getattr(config, field) for field, key in LLAMA_CONFIG_KEYS.items()},
        "num_key_value_heads": config.num_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
    } | shared_config(config, eot_id, dtype)


def refuse_unsupported(checks: list[tuple[bool, str]]) -> None:
    """A config.json's features gpt25 does not compute, (present, description) each: one ValueError naming all."""
    unsupported = [description for present, description in checks if present]
    if unsupported:
        raise ValueError(f"cannot import: gpt25 has no {', '.join(unsupported)}")


def gpt2_model_config(hf: dict) -> ModelConfig:
    """ModelConfig of a GPT-2 config.json, refusing what gpt25's GPT-2 does not compute."""
    refuse_unsupported([
        (hf.get("activation_function", "gelu_new") not in GPT2_ACTIVATIONS,
         f"activation {hf.get('activation_function')!r} (only the tanh GELU, gelu_new)"),
        (abs(hf.get("layer_norm_epsilon", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-12,
         f"layer_norm_epsilon {hf.get('layer_norm_epsilon')}"),
        (not hf.get("scale_attn_weights", True), "unscaled attention (scale_attn_weights false)"),
        (hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx"),
        (hf.get("add_cross_attention", False), "cross-attention"),
    ])
    return ModelConfig.preset("gpt2", **{field: hf[key] for field, key in GPT2_CONFIG_KEYS.items()},
                              d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
                              tie_embeddings=hf.get("tie_word_embeddings", True))


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig from a Llama config.json, refusing features gpt25 does not have."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"model_type is {hf.get('model_type')!r}; only Llama and GPT-2 checkpoints can be imported")
    num_heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    refuse_unsupported([
        (hf.get("num_key_value_heads", num_heads) != num_heads, "grouped-query attention"),
        (hf.get("attention_bias", False) or hf.get("mlp_bias", False), "biases"),
        (hf.get("hidden_act", "silu") != "silu", f"activation {hf.get('hidden_act')!r} (only silu)"),
        (abs(hf.get("rms_norm_eps", RMS_NORM_EPS) - RMS_NORM_EPS) > 1e-12, f"rms_norm_eps {hf.get('rms_norm_eps')}"),
        (head_dim * num_heads != hf["hidden_size"], f"head_dim {head_dim} != hidden_size / heads"),
        (rope.get("rope_type", "default") != "default", f"rope type {rope.get('rope_type')!r}"),
    ])
    rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
    return ModelConfig(**{field: hf[key] for field, key in LLAMA_CONFIG_KEYS.items()}, rope_theta=float(rope_theta),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def export_hf(checkpoint: str | Path | TransformerLM, tokenizer_dir: str | Path | None, out_dir: str | Path, *,
              dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Write a LlamaForCausalLM or GPT2LMHeadModel folder to `out_dir` (atomically); `checkpoint` and
    `tokenizer_dir` (None: no tokenizer) as gpt25.checkpoint.load_for_inference takes them."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another --out or pass --force")
    model, tokenizer, _ = load_for_inference(checkpoint, tokenizer_dir)
    with atomic_folder(out_dir) as temporary:
        _write_hf_folder(model, tokenizer, temporary, dtype)
    return out_dir


def _write_hf_folder(model: TransformerLM, tokenizer: Tokenizer | None, folder: Path, dtype: torch.dtype) -> None:
    gpt2 = hf_class(model.config) == "GPT2LMHeadModel"
    eot_id = _write_tokenizer(tokenizer, folder) if tokenizer is not None else None
    convert = to_gpt2_state_dict if gpt2 else to_hf_state_dict
    weights = {name: tensor.to(dtype) for name, tensor in convert(model.state_dict(), model.config).items()}
    save_weights(weights, folder / HF_WEIGHTS_FILE, metadata={"format": "pt"})
    config = (gpt2_config if gpt2 else hf_config)(model.config, eot_id, dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # A chat model's turn also ends at a role token (the model starting the next turn), as in `gpt25 chat`.
    stop_ids = reply_stop_ids(tokenizer) if tokenizer is not None and has_chat_tokens(tokenizer) else eot_id
    generation = {"bos_token_id": eot_id, "eos_token_id": stop_ids, "do_sample": True, "temperature": 0.8,
                  "top_p": 0.9}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def _write_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> int | None:
    """tokenizer.json + tokenizer_config.json (with the chat template for a chat model); returns the EOT id."""
    tokenizer.save_huggingface(out_dir / "tokenizer.json")
    eot_id = tokenizer.token_id(END_OF_TEXT) if END_OF_TEXT in tokenizer.special_tokens else None
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    if eot_id is not None:
        settings.update(bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=None)
    if has_chat_tokens(tokenizer):  # a chat model: apply_chat_template renders as gpt25.tokenizer.chat_format
        settings.update(chat_template=JINJA_CHAT_TEMPLATE, additional_special_tokens=CHAT_SPECIAL_TOKENS)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return eot_id


def read_hf_config(hf_dir: str | Path) -> dict:
    """A transformers folder's config.json; one that is not JSON is a one-line error naming it."""
    file = Path(hf_dir) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; give a transformers model folder")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON ({error}); fix or replace that file") from None


def read_hf_weights(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every weight of a transformers folder: its safetensors in one file or sharded, or pytorch_model.bin."""
    hf_dir = Path(hf_dir)
    if (hf_dir / HF_INDEX_FILE).is_file():
        shard_names = sorted(set(json.loads((hf_dir / HF_INDEX_FILE).read_text())["weight_map"].values()))
    elif (hf_dir / HF_WEIGHTS_FILE).is_file():
        shard_names = [HF_WEIGHTS_FILE]
    elif (hf_dir / HF_TORCH_WEIGHTS_FILE).is_file():
        return torch.load(hf_dir / HF_TORCH_WEIGHTS_FILE, map_location="cpu", weights_only=True)  # tensors only
    else:
        raise FileNotFoundError(f"no {HF_WEIGHTS_FILE}, {HF_INDEX_FILE} or {HF_TORCH_WEIGHTS_FILE} in {hf_dir}")
    return {name: tensor for shard in shard_names for name, tensor in read_weights(hf_dir / shard).items()}


def read_hf_folder(hf_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, gpt25 state dict) of a transformers Llama or GPT-2 folder."""
    hf = read_hf_config(hf_dir)
    gpt2 = hf.get("model_type") == "gpt2"
    config = gpt2_model_config(hf) if gpt2 else config_from_hf(hf)
    return config, (from_gpt2_state_dict if gpt2 else from_hf_state_dict)(read_hf_weights(hf_dir), config)


def import_hf(hf_dir: str | Path) -> tuple[TransformerLM, dict]:
    """Load a LlamaForCausalLM or GPT2LMHeadModel folder as a TransformerLM; returns (model, hf config)."""
    config, state = read_hf_folder(hf_dir)
    # Built on the CPU, not on meta: materialising meta tensors imports sympy (seconds), more than the init costs.
    model = TransformerLM(config)
    model.load_state_dict(state, assign=True)
    return model.eval(), read_hf_config(hf_dir)


def upload_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder` to it; returns the repo URL. Offline -> ConnectionError."""
    from huggingface_hub import HfApi

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; export one first with `gpt25 export hf`")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload gpt25 model")
    except Exception as error:  # network, auth and offline errors all end here; one line for the CLI
        raise ConnectionError(f"could not upload to the Hub repo {repo_id}: {type(error).__name__}: {error}") from error
    return str(url)
