"""Checkpoints that describe themselves: save (`save_checkpoint`, `save_sharded_checkpoint`), resume
(`load_training_state`), load for inference (`load_model`, `load_for_inference`) and `consolidate`.
Manual: docs/training.md (Checkpoint format: the files on disk, atomic writes, damaged files).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt25.device import is_fsdp
from gpt25.files import atomic_folder, atomic_path, fresh_temporary, replace_folder, set_usual_mode, write_json_atomic
from gpt25.model import ModelConfig, TransformerLM
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.io import META_FILE as TOKENIZER_FILE

FORMAT = "gpt25-checkpoint"
VERSION = 1
STEP_DIR = re.compile(r"^step_(\d{7})$")
META_FILE = "meta.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
SHARDED_DIR = "dcp"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints under RUN_DIR/checkpoints, oldest first (temporary dirs are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if STEP_DIR.match(path.name) and (path / META_FILE).is_file()]
    return sorted(found, key=lambda path: path.name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A step dir, a run dir (its newest checkpoint) or a consolidated .safetensors file, checked to exist."""
    path = Path(path)
    if (path.is_file() and path.suffix == ".safetensors") or (path / META_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise FileNotFoundError(f"no checkpoint at {path}: expected a step_XXXXXXX dir, a run dir with "
                            "checkpoints/, or a consolidated .safetensors file")


def read_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of a step dir, or the <name>.json sidecar of a consolidated .safetensors file."""
    path = resolve_checkpoint(path)
    meta_path = path.with_suffix(".json") if path.is_file() else path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"checkpoint metadata {meta_path} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise damaged(meta_path, error) from error
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a gpt25 checkpoint (format {meta.get('format')!r})")
    return meta


def damaged(file: Path, error: Exception) -> ValueError:
    """One-line error for an unreadable checkpoint file, pointing at another checkpoint of the run if there is one."""
    detail = str(error).strip().split("\n")[0].split(". ")[0] or type(error).__name__  # torch's run to paragraphs
    step_dir = file.parent
    run_checkpoints = list_checkpoints(step_dir.parent.parent) if STEP_DIR.match(step_dir.name) else []
    others = [path for path in run_checkpoints if path != step_dir]
    hint = f"e.g. --checkpoint {others[-1]}" if others else "or write this one again"
    return ValueError(f"{file} is damaged ({detail}); use another checkpoint, {hint}")


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or foreign file is a one-line error naming it."""
    try:
        return load_file(file)
    except SafetensorError as error:
        raise damaged(file, error) from error


def save_weights(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors' save_file, with the usual umask-based mode: it creates files private (0600)."""
    save_file(tensors, file, metadata=metadata)
    set_usual_mode(file)


def read_train_state(file: Path) -> dict[str, Any]:
    """train_state.pt (tensors and plain containers only); a truncated file is a one-line error naming it."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise damaged(file, error) from error


def check_tokenizer_matches(tokenizer: Tokenizer, model_vocab_size: int, fingerprint: str | None) -> None:
    """The tokenizer must fit the model's embedding and, when the checkpoint records one, have its fingerprint."""
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {model_vocab_size}; "
            "pass the tokenizer the model was trained with"
        )
    if fingerprint and fingerprint != tokenizer.fingerprint():
        raise ValueError(
            f"tokenizer fingerprint {tokenizer.fingerprint()[:12]} differs from the checkpoint's {fingerprint[:12]}; "
            "pass the tokenizer the model was trained with"
        )


def make_meta(step: int, model_config: ModelConfig | None, *, train_config: dict | None = None,
              tokenizer_fingerprint: str | None = None, world_size: int = 1, sharded: bool = False) -> dict:
    """meta.json's contents; model_config is None for a module other than a TransformerLM."""
    return {"format": FORMAT, "version": VERSION, "step": step,
            "model_config": model_config.to_dict() if model_config else None,
            "train_config": train_config or {}, "tokenizer_fingerprint": tokenizer_fingerprint,
            "world_size": world_size, "sharded": sharded, "torch_version": str(torch.__version__)}


def check_compatible(meta: dict, model_config: ModelConfig, tokenizer_fingerprint: str | None) -> None:
    """Refuse to resume into a different model shape or tokenizer, naming every differing setting."""
    # None: saved from a module other than a TransformerLM; a meta older than a setting holds its default
    saved = ModelConfig.from_dict(meta["model_config"]).to_dict() if meta["model_config"] else {}
    differences = [f"{name} (checkpoint {saved.get(name)!r}, now {value!r})"
                   for name, value in model_config.to_dict().items() if saved.get(name) != value]
    saved_fingerprint = meta.get("tokenizer_fingerprint")
    if saved_fingerprint and tokenizer_fingerprint and saved_fingerprint != tokenizer_fingerprint:
        differences.append(f"tokenizer (checkpoint {saved_fingerprint[:12]}, now {tokenizer_fingerprint[:12]})")
    if differences:
        raise ValueError(f"cannot resume from step {meta['step']}: checkpoint differs in {'; '.join(differences)}; "
                         "pass the checkpoint's settings or start a new --out")


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as tensors and plain containers."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's current device only
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_initialized():
        torch.cuda.set_rng_state(state["cuda"])


def write_checkpoint_files(folder: Path, train_state: dict, meta: dict, weights: dict | None = None) -> None:
    """train_state.pt, meta.json and (unless sharded: DCP wrote them) model.safetensors into `folder`."""
    if weights is not None:
        save_weights(weights, folder / WEIGHTS_FILE)
    torch.save(train_state, folder / STATE_FILE)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, iteration: int,
                    out: str | os.PathLike, *, meta: dict | None = None,
                    rank_states: list[dict] | None = None) -> Path:
    """Save any module's weights, optimizer state and iteration as checkpoint dir `out`; returns it.
    Under DDP rank 0 alone calls this (every rank holds the full model)."""
    model = model.module if hasattr(model, "module") else model
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    # Keyed by parameter name, the layout of DCP's full optimizer state dict, so FSDP runs can resume from it too.
    optimizer_state = named_optimizer_state(model, optimizer) if optimizer else None
    train_state = {"step": iteration, "optimizer": optimizer_state, "ranks": rank_states or []}
    config = getattr(model, "config", None)  # a TransformerLM's: load_model needs it, load_checkpoint does not
    meta = meta or make_meta(iteration, config if isinstance(config, ModelConfig) else None)
    with atomic_folder(Path(out)) as temporary:
        write_checkpoint_files(temporary, train_state, meta, weights)
    return Path(out)


def save_sharded_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                            path: str | Path, *, meta: dict, rank_states: list[dict], rank: int) -> None:
    """Collective save of an FSDP model with torch.distributed.checkpoint; every rank calls this."""
    # DCP is imported on the sharded paths only: it takes seconds, and one-process runs never need it.
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = Path(path)
    temporary = fresh_temporary(final) if rank == 0 else final.with_name(f".tmp-{final.name}")  # rank 0 clears it
    dist.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=temporary / SHARDED_DIR)
    if rank == 0:
        write_checkpoint_files(temporary, {"step": iteration, "optimizer": None, "ranks": rank_states}, meta)
        replace_folder(temporary, final)
    dist.barrier()


def load_checkpoint(src: str | os.PathLike, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> int:
    """Load weights (and optimizer state when given) from a step dir or a run dir (its newest checkpoint),
    sharded or not, into one process or FSDP ranks; returns its step."""
    return load_training_state(src, model, optimizer)["step"]


def load_training_state(path: str | Path, model: torch.nn.Module,
                        optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore model (+ optimizer) in place; returns train_state.pt (step, per-rank loader and RNG states)."""
    path = resolve_checkpoint(path)
    if path.is_file():
        raise ValueError(f"{path} holds consolidated weights only; resume from a step_XXXXXXX checkpoint dir")
    meta = read_meta(path)
    train_state = read_train_state(path / STATE_FILE)
    if optimizer and not meta["sharded"] and train_state["optimizer"] is None:
        if not meta.get("imported_from"):
            raise ValueError(f"{path} has no optimizer state (weights only); it cannot resume training")
        optimizer = None  # imported weights without an optimizer: AdamW starts with fresh moments
    if meta["sharded"] or is_fsdp(model):
        _load_with_state_dict_api(path, meta, train_state, model, optimizer)
    else:
        model = model.module if hasattr(model, "module") else model
        model.load_state_dict(read_weights(path / WEIGHTS_FILE))
        if optimizer:
            load_named_optimizer_state(model, optimizer, train_state["optimizer"])
    return train_state


def _load_with_state_dict_api(path: Path, meta: dict, train_state: dict, model: torch.nn.Module,
                              optimizer: torch.optim.Optimizer | None) -> None:
    """Sharded checkpoint into any layout, or a single-process checkpoint into an FSDP model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    optimizers = [optimizer] if optimizer else []
    if meta["sharded"]:
        model_state, optimizer_state = get_state_dict(model, optimizers)
        load_dcp({"model": model_state} | ({"optimizer": optimizer_state} if optimizer else {}), path / SHARDED_DIR)
        set_state_dict(model, optimizers, model_state_dict=model_state, optim_state_dict=optimizer_state)
    else:
        set_state_dict(model, optimizers, model_state_dict=read_weights(path / WEIGHTS_FILE),
                       optim_state_dict=train_state["optimizer"] if optimizer else {},
                       options=StateDictOptions(full_state_dict=True))


def load_dcp(state: dict[str, Any], folder: Path) -> None:
    """Fill `state` in place from a DCP folder, resharding to this layout (in one process too)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process is intended
        dcp.load(state, checkpoint_id=folder, no_dist=not torch.distributed.is_initialized())


def named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with parameter names in place of positions (portable across layouts)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    position_names = [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]
    state = optimizer.state_dict()
    return {"state": {position_names[position]: values for position, values in state["state"].items()},
            "param_groups": [group | {"params": [position_names[position] for position in group["params"]]}
                             for group in state["param_groups"]]}


def load_named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of `named_optimizer_state` for the same model and parameter grouping."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    positions = {names[id(parameter)]: position for position, parameter in
                 enumerate(parameter for group in optimizer.param_groups for parameter in group["params"])}
    missing = sorted(set(positions) - {name for group in state["param_groups"] for name in group["params"]})
    if missing:
        raise ValueError(f"optimizer state lacks parameters {missing[:3]}...; the checkpoint is from another model")
    current_groups = optimizer.state_dict()["param_groups"]
    saved_members = [{positions[name] for name in group["params"]} for group in state["param_groups"]]
    if saved_members == [set(group["params"]) for group in current_groups]:
        groups = [saved | {"params": now["params"]}
                  for saved, now in zip(state["param_groups"], current_groups, strict=True)]
    else:  # grouped otherwise (an imported run that decayed every parameter): the moments, this grouping's settings
        groups = current_groups
    optimizer.load_state_dict({"state": {positions[name]: values for name, values in state["state"].items()},
                               "param_groups": groups})


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> tuple[TransformerLM, dict]:
    """A TransformerLM in eval mode from a step dir, a run dir (newest checkpoint) or a .safetensors file."""
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    if not meta["model_config"]:
        raise ValueError(f"{path} holds a module other than a TransformerLM (no model config); "
                         "load it into that module with load_checkpoint")
    model = TransformerLM(ModelConfig.from_dict(meta["model_config"]))
    if path.is_dir() and meta["sharded"]:
        state = model.state_dict()
        load_dcp({"model": state}, path / SHARDED_DIR)
        model.load_state_dict(state)
    else:
        model.load_state_dict(read_weights(path if path.is_file() else path / WEIGHTS_FILE))
    return model.to(device=device, dtype=dtype).eval(), meta


def load_for_inference(checkpoint: str | Path | torch.nn.Module, tokenizer: str | Path | Tokenizer | None,
                       device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None) -> tuple[TransformerLM, Tokenizer | None, dict]:
    """(model, tokenizer, meta), the tokenizer checked against the model (ValueError otherwise; None skips it).
    A model in memory gets meta {} and is moved only when a device or dtype is given."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = Tokenizer.load(tokenizer)
    if isinstance(checkpoint, torch.nn.Module):
        model, meta = checkpoint, {}
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
    else:
        model, meta = load_model(checkpoint, device=device or "cpu", dtype=dtype)
    if tokenizer is not None:
        check_tokenizer_matches(tokenizer, model.config.vocab_size, meta.get("tokenizer_fingerprint"))
    return model, tokenizer, meta


def find_tokenizer_dir(checkpoint: str | Path) -> Path:
    """The tokenizer folder of a checkpoint when none is named: the run dir's `tokenizer/`, else the one
    its training recorded (train config `tokenizer`); FileNotFoundError (one line) when neither exists."""
    path = resolve_checkpoint(checkpoint)
    run_dir = path.parent.parent if STEP_DIR.match(path.name) else path.parent
    candidates = [Path(checkpoint) / "tokenizer", run_dir / "tokenizer"]
    recorded = (read_meta(path).get("train_config") or {}).get("tokenizer")
    candidates = list(dict.fromkeys(candidates + ([Path(recorded)] if recorded else [])))
    for candidate in candidates:
        if (candidate / TOKENIZER_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no tokenizer found for {checkpoint} (looked in {', '.join(map(str, candidates))}); "
                            "pass --tokenizer DIR")


def consolidate(path: str | Path, out_file: str | Path) -> Path:
    """Write one safetensors file of full weights (+ <name>.json metadata sidecar) from any checkpoint."""
    out_file = Path(out_file)
    if out_file.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out_file}")
    model, meta = load_model(path)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    # Each file under a temporary name, the sidecar renamed first and the weights on leaving, so
    # load_model never sees half a file.
    with atomic_path(out_file) as temporary:
        save_weights({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, temporary)
        write_json_atomic(out_file.with_suffix(".json"),
                          dict(meta, sharded=False, consolidated_from=str(resolve_checkpoint(path))))
    return out_file


def remove_old_checkpoints(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (and leftover temporary dirs); returns what went."""
    removed = list_checkpoints(run_dir)[:-keep] if keep > 0 else []
    folder = Path(run_dir) / "checkpoints"
    leftovers = [path for path in folder.glob(".tmp-step_*")] + [path for path in folder.glob(".old-step_*")]
    for path in removed + leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return removed
