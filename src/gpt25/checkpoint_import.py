"""`gpt25 checkpoint import`: turn another project's checkpoint into a gpt25 checkpoint directory
(`import_checkpoint`), reading whichever of `LAYOUTS` the source is in.
Manual: docs/import.md (the layouts, the seed's optimizer state, adding a layout).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt25.checkpoint import check_tokenizer_matches, load_dcp, make_meta, write_checkpoint_files
from gpt25.files import atomic_folder
from gpt25.interop import LLAMA_CONFIG_KEYS, SEED, name_map, read_hf_config, read_hf_folder, read_hf_weights
from gpt25.model import ModelConfig, TransformerLM
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import CHAT_SPECIAL_TOKENS, add_chat_tokens
from gpt25.tokenizer.codec import END_OF_TEXT

TOKENIZER_DIR = "tokenizer"
SEED_PREFIXES = ("_orig_mod.", "module.")
SEED_HEAD_DIM = 64  # the seed's 124M model: 768 wide, 12 heads
SEED_MOMENTS = {"t": "step", "m": "exp_avg", "v": "exp_avg_sq"}  # the seed's AdamW state -> gpt25's
SEED_HF_MODEL_TYPE = "gpt2.5"
DCP_PREFIX = "app."


@dataclass
class Imported:
    """What a layout's reader found: enough to write a gpt25 checkpoint directory."""

    model_config: ModelConfig
    weights: dict[str, torch.Tensor]  # gpt25 names
    step: int = 0
    optimizer: dict[str, Any] | None = None  # {"state": {name: {...}}, "param_groups": [...]}, by parameter name
    tokenizer: Tokenizer | None = None  # the source's own tokenizer, when it has one
    train_config: dict[str, Any] = field(default_factory=dict)  # the source run's settings, as gpt25 flags


@dataclass(frozen=True)
class Layout:
    name: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, dict[str, Any]], Imported]  # (SRC, model settings the user gave) -> Imported


# ----- the GPT 2.5 seed's names -----

def seed_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The seed's parameter name -> its shape for `config` (gpt25's: the architecture is the same)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ours = TransformerLM(config).state_dict()
    return {theirs: tuple(ours[name].shape) for name, theirs in name_map(config.num_layers, SEED).items()}


def strip_prefixes(name: str, prefixes: tuple[str, ...] = SEED_PREFIXES) -> str:
    """`name` without any leading torch.compile / DDP wrapper prefixes."""
    while name.startswith(prefixes):
        name = name.removeprefix(next(prefix for prefix in prefixes if name.startswith(prefix)))
    return name


def check_seed_tensors(shapes: dict[str, tuple[int, ...]], source: Path, tied: bool = False) -> None:
    """Refuse a checkpoint missing a tensor of the seed's model or holding one of another shape, naming it;
    `tied`: the head is the embedding, so `linear.weight` may be absent."""
    for needed in ("emb.weight", "tblocks.0.ffn.w1"):  # seed_config reads the sizes off these
        if len(shapes.get(needed, ())) != 2:
            raise ValueError(f"{source} has no tensor {needed} of the seed's model; is it a GPT 2.5 checkpoint?")
    config = seed_config(shapes, {"num_heads": 1})
    expected = seed_shapes(config)
    for name, shape in expected.items():
        if tied and name == "linear.weight" and name not in shapes:
            continue
        if name not in shapes:
            raise ValueError(f"{source} has no tensor {name} (expected shape {shape}); the checkpoint is incomplete")
        if tuple(shapes[name]) != shape:
            raise ValueError(f"{source}: tensor {name} has shape {tuple(shapes[name])}, expected {shape} "
                             f"for d_model {config.d_model}, d_ff {config.d_ff}, vocab {config.vocab_size}")


def seed_config(shapes: dict[str, tuple[int, ...]], settings: dict[str, Any]) -> ModelConfig:
    """ModelConfig from the seed's tensor shapes; heads, context and theta from `settings` (the weights
    cannot tell them), else the seed's 124M choices."""
    vocab_size, d_model = shapes["emb.weight"]
    num_layers = 1 + max(int(name.split(".")[1]) for name in shapes if name.startswith("tblocks."))
    return ModelConfig(vocab_size=vocab_size, context_length=settings.get("context_length") or 1024,
                       d_model=d_model, num_layers=num_layers,
                       num_heads=settings.get("num_heads") or max(1, d_model // SEED_HEAD_DIM),
                       d_ff=shapes["tblocks.0.ffn.w1"][0], rope_theta=float(settings.get("rope_theta") or 10000.0))


def from_seed_weights(seed_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The seed's weights under gpt25's names, as float32; a tied checkpoint without `linear` reuses `emb`."""
    weights = {}
    for ours, theirs in name_map(config.num_layers, SEED).items():
        if theirs == "linear.weight" and theirs not in seed_state:
            theirs = "emb.weight"
        weights[ours] = seed_state[theirs].float().contiguous()
    return weights


# ----- the seed's torch.distributed.checkpoint folder -----

def is_seed_dcp(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file() and any(
        key.startswith(DCP_PREFIX) for key in dcp_metadata(path).state_dict_metadata)


def dcp_metadata(path: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(path)).read_metadata()


def read_dcp_entries(path: Path) -> dict[str, Any]:
    """Every entry of a DCP folder by its flattened name ("app.model.emb.weight"), loaded in one process."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    entries: dict[str, Any] = {}
    for key, item in dcp_metadata(path).state_dict_metadata.items():
        is_tensor = isinstance(item, TensorStorageMetadata)
        entries[key] = torch.empty(item.size, dtype=item.properties.dtype) if is_tensor else None
    load_dcp(entries, path)
    return entries


def read_seed_dcp(path: Path, settings: dict[str, Any]) -> Imported:
    """The seed's `dcp.save({"app": {"model", "optimizer", "iteration"}})` folder."""
    entries = {strip_dcp_key(key): value for key, value in read_dcp_entries(path).items()}
    model_state = {key.removeprefix("model."): value for key, value in entries.items() if key.startswith("model.")}
    shapes = {name: tuple(tensor.shape) for name, tensor in model_state.items()}
    check_seed_tensors(shapes, path)
    config = seed_config(shapes, settings)
    optimizer, train_config = seed_optimizer_state(entries, config, path)
    step = int(entries.get("iteration") or 0)
    return Imported(config, from_seed_weights(model_state, config), step, optimizer, train_config=train_config)


def strip_dcp_key(key: str) -> str:
    """"app.model._orig_mod.emb.weight" -> "model.emb.weight" (prefixes also inside optimizer names)."""
    head, _, rest = key.removeprefix(DCP_PREFIX).partition(".")
    if head == "optimizer" and rest.startswith("state."):
        return f"optimizer.state.{strip_prefixes(rest.removeprefix('state.'))}"
    return f"{head}.{strip_prefixes(rest)}" if rest else head


def seed_optimizer_state(entries: dict[str, Any], config: ModelConfig,
                         source: Path) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The seed's AdamW state as gpt25's named optimizer state (one group, every parameter) and its
    settings as gpt25 train flags; (None, {}) when the folder holds no optimizer."""
    names = name_map(config.num_layers, SEED)
    per_parameter: dict[str, dict[str, Any]] = {}
    for key, value in entries.items():
        if key.startswith("optimizer.state."):
            seed_name, _, moment = key.removeprefix("optimizer.state.").rpartition(".")
            per_parameter.setdefault(seed_name, {})[moment] = value
    if not per_parameter:
        return None, {}
    shapes = seed_shapes(config)
    state = {ours: seed_moments(per_parameter.get(theirs, {}), theirs, shapes[theirs], source)
             for ours, theirs in names.items()}
    group = seed_param_group(entries)  # lr, betas, eps, weight_decay
    train_config = {"lr": group["lr"], "beta1": group["betas"][0], "beta2": group["betas"][1], "eps": group["eps"],
                    "weight_decay": group["weight_decay"], "decay_all": True}
    return {"state": state, "param_groups": [group | {"params": list(names)}]}, train_config


def seed_moments(moments: dict[str, Any], seed_name: str, shape: tuple[int, ...], source: Path) -> dict[str, Any]:
    """One parameter's t, m, v as gpt25 AdamW's step, exp_avg, exp_avg_sq, checked to be there with its shape."""
    state = {}
    for theirs, ours in SEED_MOMENTS.items():
        value = moments.get(theirs)
        if value is None:
            raise ValueError(f"{source}: the optimizer state has no {theirs} for {seed_name}; the checkpoint is incomplete")
        if ours == "step":
            state[ours] = int(value)
        elif tuple(value.shape) != shape:
            raise ValueError(f"{source}: optimizer {theirs} of {seed_name} has shape {tuple(value.shape)}, "
                             f"expected {shape}")
        else:
            state[ours] = value.float().contiguous()
    return state


def seed_param_group(entries: dict[str, Any]) -> dict[str, Any]:
    """The seed's first param group (DCP flattens it: "optimizer.param_groups.0.lr") with gpt25's key names."""
    group = {key.removeprefix("optimizer.param_groups.0."): value for key, value in entries.items()
             if key.startswith("optimizer.param_groups.0.")}
    return {"lr": float(group.get("lr", 0.0)), "betas": tuple(float(beta) for beta in group.get("betas", (0.9, 0.999))),
            "eps": float(group.get("epsilon", group.get("eps", 1e-8))),
            "weight_decay": float(group.get("weight_decay", 0.0))}


# ----- the seed's Hugging Face folder (itskoma/MyGPT) -----

def has_model_type(model_type: str) -> Callable[[Path], bool]:
    """A layout's detect: `path` is a folder whose config.json names `model_type`."""
    return lambda path: (path / "config.json").is_file() and read_hf_config(path).get("model_type") == model_type


def read_seed_hf(path: Path, settings: dict[str, Any]) -> Imported:
    """config.json (model_type "gpt2.5") + weights named `model.<seed name>`."""
    hf = read_hf_config(path)
    seed_state = {strip_prefixes(name, ("model.", *SEED_PREFIXES)): tensor
                  for name, tensor in read_hf_weights(path).items()}
    check_seed_tensors({name: tuple(tensor.shape) for name, tensor in seed_state.items()}, path,
                       tied=bool(hf.get("tie_word_embeddings", False)))

    def setting(field: str) -> Any:  # the seed's name (gpt25's), else its Hugging Face (Llama) alias
        keys = list(dict.fromkeys([field, LLAMA_CONFIG_KEYS[field]]))
        found = [hf[key] for key in keys if hf.get(key) is not None]
        if not found:
            raise ValueError(f"{path / 'config.json'} has no {' / '.join(keys)}; is it the seed's config?")
        return found[0]

    config = ModelConfig(**{field: setting(field) for field in LLAMA_CONFIG_KEYS if field != "num_heads"},
                         num_heads=settings.get("num_heads") or setting("num_heads"),
                         rope_theta=float(hf.get("theta") or hf.get("rope_theta") or 10000.0))
    return Imported(config, from_seed_weights(seed_state, config), tokenizer=read_hf_tokenizer(path))


def read_hf_tokenizer(path: Path) -> Tokenizer | None:
    """The folder's GPT-2-style vocab.json + merges.txt (with `<|endoftext|>`), else its byte-level BPE
    tokenizer.json (with its special added tokens), else None."""
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return Tokenizer.from_files(vocab, merges, [END_OF_TEXT])
    if (path / "tokenizer.json").is_file():
        return read_tokenizer_json(path / "tokenizer.json")
    return None


def read_tokenizer_json(file: Path) -> Tokenizer | None:
    """A byte-level BPE tokenizer.json (GPT-2's printable byte encoding, as `gpt25 export hf` writes it),
    through GPT-2-style files: its vocab and merges are the same strings; None for another kind."""
    saved = json.loads(file.read_text(encoding="utf-8"))
    model = saved.get("model") or {}
    if model.get("type") != "BPE":
        return None
    added = sorted(saved.get("added_tokens") or [], key=lambda token: token["id"])
    vocab = model["vocab"] | {token["content"]: token["id"] for token in added}
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(folder) / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")
        specials = [token["content"] for token in added if token.get("special")]
        return Tokenizer.from_files(Path(folder) / "vocab.json", Path(folder) / "merges.txt", specials)


# ----- a transformers Llama or GPT-2 folder (what `gpt25 export hf` writes; OpenAI's gpt2) -----

def read_transformers(path: Path, settings: dict[str, Any]) -> Imported:
    config, weights = read_hf_folder(path)
    return Imported(config, weights, tokenizer=read_hf_tokenizer(path))


LAYOUTS = [  # in the order they are tried
    Layout("seed-dcp", is_seed_dcp, read_seed_dcp),  # .metadata; app.model / app.optimizer / app.iteration
    Layout("seed-hf", has_model_type(SEED_HF_MODEL_TYPE), read_seed_hf),  # + model.safetensors or pytorch_model.bin
    Layout("llama-hf", has_model_type("llama"), read_transformers),  # e.g. from `gpt25 export hf`
    Layout("gpt2-hf", has_model_type("gpt2"), read_transformers),  # OpenAI's gpt2, `gpt25 export hf` of --arch gpt2
]


def detect_layout(path: Path) -> Layout:
    """The first layout in LAYOUTS that recognises `path`; an unknown one is a one-line error listing them."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; give a checkpoint folder to import")
    for layout in LAYOUTS:
        if layout.detect(path):
            return layout
    raise ValueError(f"cannot tell what {path} holds; the known layouts are {', '.join(l.name for l in LAYOUTS)} "
                     "(see `gpt25 checkpoint import --help`)")


# ----- writing the gpt25 checkpoint directory -----

def choose_tokenizer(imported: Imported, tokenizer_dir: str | Path | None) -> Tokenizer | None:
    """--tokenizer, else the source's own; given the chat role tokens when the model has exactly three more
    rows (GPT-2's 50257 -> the chat model's 50260); refused when it has more tokens than the model."""
    tokenizer = Tokenizer.load(tokenizer_dir) if tokenizer_dir else imported.tokenizer
    if tokenizer is None:
        return None
    if tokenizer.vocab_size + len(CHAT_SPECIAL_TOKENS) == imported.model_config.vocab_size:
        tokenizer = add_chat_tokens(tokenizer)
    check_tokenizer_matches(tokenizer, imported.model_config.vocab_size, None)
    return tokenizer


def import_checkpoint(source: str | Path, out: str | Path, *, tokenizer_dir: str | Path | None = None,
                      force: bool = False, settings: dict[str, Any] | None = None) -> tuple[Path, Layout, dict]:
    """Write `source` as a gpt25 checkpoint directory (with tokenizer/) to `out`; returns (out, layout, meta)."""
    source, out = Path(source), Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    if tokenizer_dir and not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer folder {tokenizer_dir} not found; make one with `gpt25 tokenizer import`")
    layout = detect_layout(source)
    imported = layout.read(source, settings or {})
    tokenizer = choose_tokenizer(imported, tokenizer_dir)
    weights = checked_weights(imported)
    meta = make_meta(imported.step, imported.model_config, train_config=imported.train_config,
                     tokenizer_fingerprint=tokenizer.fingerprint() if tokenizer else None)
    meta["imported_from"] = {"layout": layout.name, "source": str(source.resolve())}
    train_state = {"step": imported.step, "optimizer": imported.optimizer, "ranks": []}
    with atomic_folder(out) as temporary:
        write_checkpoint_files(temporary, train_state, meta, weights)
        if tokenizer is not None:
            tokenizer.save(temporary / TOKENIZER_DIR)
    return out, layout, meta


def checked_weights(imported: Imported) -> dict[str, torch.Tensor]:
    """The weights as a TransformerLM of the config loads them (strictly: every name, every shape)."""
    model = TransformerLM(imported.model_config)
    try:
        model.load_state_dict(imported.weights)
    except RuntimeError as error:  # torch's message is a paragraph; its first problem is enough
        problem = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise ValueError(f"the weights do not fit the model config {imported.model_config}: {problem}") from None
    return {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
