"""A run's settings as dataclasses (RunConfig, TrainConfig for `gpt25 train`, SFTConfig for `gpt25 sft`), each field
with its help text, and the flags and TOML settings made from them (`add_train_arguments`, `resolve_config`).

Manual: docs/training.md (and docs/chat.md for `gpt25 sft`)
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from gpt25.model import ModelConfig

CHOICES = {
    "dtype": ("float32", "bfloat16"),
    "compile": ("auto", "on", "off"),
    "tracker": ("none", "tensorboard", "wandb"),
    "parallel": ("fsdp", "ddp", "none"),
    # gpt25.model's ARCHITECTURES and COMPONENT_CHOICES, spelled out: importing the model would import torch.
    "arch": ("gpt25", "gpt2", "gpt25x"),
    "norm": ("rmsnorm", "layernorm"),
    "mlp": ("swiglu", "gelu", "relu2"),
    "positions": ("rope", "learned"),
    "init": ("gpt25", "gpt2", "zero"),
    "bias": ("on", "off"),
    "tie_embeddings": ("on", "off"),
    "qk_norm": ("on", "off"),
    "optimizer": ("adamw", "muon"),
    "schedule": ("cosine", "wsd"),
}
SWITCHES = ("bias", "tie_embeddings", "qk_norm")  # on | off here, booleans in ModelConfig


# Settings renamed since: the old name still works as a flag and a TOML key.
RENAMED = {"theta": "rope_theta"}


def _setting(default: Any, help: str, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass
class RunConfig:
    """What every run of the training loop takes; TrainConfig and SFTConfig add their data and model."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("batch_size", "grad_accum_steps", "keep_checkpoints", "log_every",
                                           "eval_steps")  # settings that must be at least 1
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ("lr", "muon_lr", "eps", "weight_decay", "max_grad_norm",
                                               "total_batch_tokens")
    COMMAND: ClassVar[str] = ""  # the command and the TOML table of these settings

    # Data and output (each command says what its data is).
    data: str = _setting("", "", "DIR")
    tokenizer: str = _setting("", "", "DIR")
    out: str = _setting("runs/gpt25", "run directory: config.json, metrics.jsonl, checkpoints/", "RUN_DIR")
    checkpoint: str = _setting("", "", "PATH|latest")
    context_length: int = _setting(256, "tokens per training sequence")
    # Batch: global batch = batch_size x grad_accum_steps x world size sequences per step.
    batch_size: int = _setting(16, "sequences per micro-batch per process")
    grad_accum_steps: int = _setting(1, "micro-batches accumulated per optimizer step")
    total_batch_tokens: int = _setting(0, "tokens per optimizer step, whatever the number of processes: sets "
                                          "--grad_accum_steps to N / (world size x batch_size x context_length) "
                                          "(0: use --grad_accum_steps)")
    # Optimisation.
    train_steps: int = _setting(1000, "optimizer steps in the whole run (sets the LR schedule length)")
    optimizer: str = _setting("adamw", "adamw, or muon (Muon for the blocks' matrices, AdamW at --lr for "
                                       "embeddings, head, norm gains and biases)")
    muon_lr: float = _setting(0.04, "Muon's peak learning rate (--optimizer muon), scaled by sqrt(max(1, rows/cols))")
    schedule: str = _setting("cosine", "lr schedule after warmup: cosine, or wsd (held at the peak, then a linear "
                                       "decay over the last 0.4 of the steps)")
    lr: float = _setting(1e-3, "peak learning rate after warmup")
    min_lr: float = _setting(-1.0, "learning rate at the end of the decay (negative: lr / 10)")
    warmup_steps: int = _setting(100, "linear warmup steps")
    beta1: float = _setting(0.9, "AdamW beta1")
    beta2: float = _setting(0.95, "AdamW beta2")
    eps: float = _setting(1e-8, "AdamW epsilon")
    weight_decay: float = _setting(0.1, "AdamW decoupled weight decay (matrices only, unless --decay_all)")
    decay_all: bool = _setting(False, "decay every parameter, RMSNorm gains and embeddings too, in one group "
                                      "(the GPT 2.5 seed's AdamW)")
    max_grad_norm: float = _setting(1.0, "clip the global gradient norm to this (0 disables clipping)")
    # Evaluation, logging, checkpoints.
    eval_every: int = _setting(250, "evaluate every N steps and at the end (0: only at the end)")
    eval_steps: int = _setting(20, "validation batches (batch_size x world size sequences each) per evaluation")
    log_every: int = _setting(10, "write a metrics.jsonl training row every N steps")
    save_every: int = _setting(1000, "checkpoint every N steps and at the end (0: only at the end)")
    keep_checkpoints: int = _setting(3, "keep the newest K checkpoints")
    tracker: str = _setting("none", "extra tracker beside metrics.jsonl: none, tensorboard or wandb")
    # Execution.
    seed: int = _setting(1337, "seed for initialisation, data order and every RNG")
    dtype: str = _setting("float32", "compute dtype: float32, or bfloat16 autocast / FSDP mixed precision")
    compile: str = _setting("off", "torch.compile the training forward: on, off, or auto (on for CUDA, off on CPU, "
                                   "where it does not help; the recipe's setting); evaluation stays uncompiled",
                            "auto|on|off")
    device: str = _setting("auto", "cpu, cuda, or auto (cuda when available); under torchrun each rank "
                                   "takes cuda:LOCAL_RANK")
    parallel: str = _setting("fsdp", "with several processes: fsdp (FSDP2 sharding), ddp, or none")

    def __post_init__(self) -> None:
        for name, allowed in CHOICES.items():
            if hasattr(self, name) and getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.train_steps and self.warmup_steps > self.train_steps:
            raise ValueError(f"--warmup_steps ({self.warmup_steps}) must be between 0 and "
                             f"--train_steps ({self.train_steps})")
        # Name the flag here: AdamW and the evaluations would not say which flag set a bad value.
        # `not x >= 0` rather than `x < 0`: NaN fails every comparison and must be refused too.
        for name in self.NON_NEGATIVE:
            if not getattr(self, name) >= 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in [0, 1), got {getattr(self, name)}")

    def accumulation_for(self, world_size: int) -> int:
        """Micro-batches per step: from --total_batch_tokens when set (a ValueError naming the nearest that divide)."""
        if not self.total_batch_tokens:
            return self.grad_accum_steps
        micro = world_size * self.batch_size * self.context_length
        steps, remainder = divmod(self.total_batch_tokens, micro)
        if remainder or not steps:
            nearest = " or ".join(f"{value:,}" for value in sorted({max(steps, 1) * micro, (steps + 1) * micro}))
            raise ValueError(f"--total_batch_tokens {self.total_batch_tokens:,} is not a multiple of world size "
                             f"{world_size} x batch_size {self.batch_size} x context_length {self.context_length} "
                             f"= {micro:,}; use {nearest}")
        return steps

    def compiles_on(self, device_type: str) -> bool:
        return self.compile == "on" or self.compile == "auto" and device_type == "cuda"

    @property
    def resolved_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr < 0 else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(RunConfig):
    """All settings of one pretraining run; `gpt25 train --help` lists them with their help text."""

    POSITIVE: ClassVar[tuple[str, ...]] = RunConfig.POSITIVE + ("context_length", "num_layers", "d_model",
                                                                "num_heads", "d_ff", "train_steps")
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = RunConfig.NON_NEGATIVE + ("core_every", "core_limit")
    COMMAND: ClassVar[str] = "train"

    data: str = _setting("", "shard directory written by `gpt25 data prepare` (required)", "DIR")
    tokenizer: str = _setting("", "tokenizer directory (default: DATA/tokenizer when it exists)", "DIR")
    checkpoint: str = _setting("", "resume from a checkpoint: a step dir, a run dir, or 'latest' (newest in "
                                      "--out; starts fresh when there is none)", "PATH|latest")
    # Architecture: a preset, and single components that override it (empty: the preset's).
    arch: str = _setting("gpt25", "architecture preset: gpt25 (RMSNorm, SwiGLU, RoPE, no biases, untied head), "
                                  "gpt2 (LayerNorm, GELU, learned positions, biases, tied head, GPT-2 init) or "
                                  "gpt25x (gpt25 with modded-nanogpt's changes: see docs/model.md)")
    norm: str = _setting("", "rmsnorm or layernorm (default: the --arch's)")
    mlp: str = _setting("", "swiglu, gelu or relu2 (default: the --arch's)")
    positions: str = _setting("", "rope or learned (default: the --arch's)")
    bias: str = _setting("", "biases in every Linear but the head: on or off (default: the --arch's)", "on|off")
    tie_embeddings: str = _setting("", "output head = token embedding: on or off (default: the --arch's)", "on|off")
    init: str = _setting("", "initialisation: gpt25, gpt2 or zero (gpt25's, output projections zero) "
                             "(default: the --arch's)")
    qk_norm: str = _setting("", "RMSNorm on each head's queries and keys: on or off (default: the --arch's)", "on|off")
    logit_softcap: float = _setting(-1.0, "logits = cap * tanh(logits / cap); 0: off (negative: the --arch's)")
    # Model shape (vocab size comes from the tokenizer).
    num_layers: int = _setting(4, "number of transformer blocks")
    d_model: int = _setting(256, "embedding / residual width")
    num_heads: int = _setting(4, "attention heads per block")
    d_ff: int = _setting(0, "MLP hidden width (0: the --mlp's, SwiGLU 8/3 d_model rounded up to 64, GELU 4 d_model)")
    rope_theta: float = _setting(10000.0, "RoPE base frequency")
    hellaswag: str = _setting("", "HellaSwag jsonl file (or 'download') to score at each evaluation", "FILE")
    hellaswag_limit: int = _setting(0, "score only the first N HellaSwag examples (0: all)")
    core_every: int = _setting(0, "score CORE every N steps and at the end (0: never)")
    core_limit: int = _setting(0, "score N examples per CORE task (0: all; nanochat's seeded shuffle, then the first N)")
    core_bundle: str = _setting("", "unpacked CORE eval bundle (default: downloaded once into ~/.cache/gpt25)", "DIR")

    def __post_init__(self) -> None:
        self._resolve_architecture()
        super().__post_init__()
        if not self.rope_theta > 0:
            raise ValueError(f"--rope_theta must be positive, got {self.rope_theta}")
        self.model_config(1)  # the model's own invariants (d_model % num_heads, ...), checked once, there

    def _resolve_architecture(self) -> None:
        """Fill the components left empty from --arch, and d_ff 0 from the MLP, so the saved config is explicit."""
        from gpt25.model.config import ARCHITECTURES, default_d_ff

        # An unknown --arch fills nothing here; RunConfig's check of CHOICES then refuses it, naming the choices.
        for name, value in ARCHITECTURES.get(self.arch, {}).items():
            if getattr(self, name) == "" or name == "logit_softcap" and self.logit_softcap < 0:
                setattr(self, name, ("on" if value else "off") if name in SWITCHES else value)
        if self.d_ff == 0 and self.mlp in CHOICES["mlp"]:
            self.d_ff = default_d_ff(self.d_model, self.mlp)

    def model_config(self, vocab_size: int) -> ModelConfig:
        from gpt25.model import ARCHITECTURES, ModelConfig

        components = {name: getattr(self, name) == "on" if name in SWITCHES else getattr(self, name)
                      for name in ARCHITECTURES[self.arch]}
        return ModelConfig(vocab_size=vocab_size, context_length=self.context_length, d_model=self.d_model,
                           num_layers=self.num_layers, num_heads=self.num_heads, d_ff=self.d_ff,
                           rope_theta=self.rope_theta, **components)


def _field_types(config_class: type[RunConfig]) -> dict[str, type]:
    hints = typing.get_type_hints(config_class)
    return {config_field.name: hints[config_field.name] for config_field in dataclasses.fields(config_class)}


def add_train_arguments(parser: argparse.ArgumentParser, config_class: type[RunConfig] = TrainConfig) -> None:
    """Add one `--name` flag per field of `config_class`, plus `--config FILE.toml`."""
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of settings; flags override it")
    types = _field_types(config_class)
    # Defaults are argparse.SUPPRESS so that only the flags typed appear in the namespace: `resolve_config` layers
    # them over the TOML file and the dataclass defaults.
    for config_field in dataclasses.fields(config_class):
        unset = config_field.default == ""  # --data, --checkpoint, ...: "(default: '')" would say nothing
        help_text = config_field.metadata["help"] + ("" if unset else f" (default: {config_field.default!r})")
        flags = [f"--{config_field.name}"] + [f"--{old}" for old, new in RENAMED.items() if new == config_field.name]
        if types[config_field.name] is bool:  # a switch: `--decay_all` alone
            parser.add_argument(*flags, action="store_const", const=True, default=argparse.SUPPRESS, help=help_text)
            continue
        # `--compile` alone means `--compile on`
        bare = {"nargs": "?", "const": "on"} if config_field.name == "compile" else {}
        parser.add_argument(*flags, type=types[config_field.name], choices=CHOICES.get(config_field.name),
                            default=argparse.SUPPRESS, metavar=config_field.metadata["metavar"], help=help_text,
                            **bare)


def read_toml_settings(path: str | Path, config_class: type[RunConfig] = TrainConfig) -> dict[str, Any]:
    """The settings in a TOML config file (top-level keys, or one [train] or [sft] table), checked by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        with path.open("rb") as handle:
            settings = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    settings = _renamed(settings.get(config_class.COMMAND, settings), path)
    known = _field_types(config_class)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; see `gpt25 {config_class.COMMAND} --help` "
                         "for the names")
    return {name: _coerce(name, value, known[name], path) for name, value in settings.items()}


def _renamed(settings: dict[str, Any], path: Path) -> dict[str, Any]:
    for old, new in RENAMED.items():
        if old in settings and new in settings:
            raise ValueError(f"{path}: {old} is the old name of {new}; give only {new}")
    return {RENAMED.get(name, name): value for name, value in settings.items()}


def _coerce(name: str, value: Any, kind: type, path: Path) -> Any:
    if name == "compile" and isinstance(value, bool):  # `compile = true` reads naturally in TOML
        return "on" if value else "off"
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ValueError(f"{path}: setting {name} must be a {kind.__name__}, got {value!r}")
    return value


def resolve_config(args: argparse.Namespace, config_class: type[RunConfig] = TrainConfig) -> RunConfig:
    """Dataclass defaults, then the TOML file named by --config, then the flags given."""
    settings = read_toml_settings(args.config, config_class) if getattr(args, "config", None) else {}
    settings.update({name: value for name, value in vars(args).items() if name in _field_types(config_class)})
    return config_class(**settings)


@dataclass
class SFTConfig(RunConfig):
    """`gpt25 sft`'s settings: the model's shape comes from the base checkpoint; defaults are the GPT 2.5 recipe's."""

    COMMAND: ClassVar[str] = "sft"

    data: str = _setting("", "conversations: .jsonl / .parquet files, folders or globs of them, 'hf:NAME[:CONFIG]' "
                             "(e.g. hf:HuggingFaceTB/smol-smoltalk) or 'python-docs-chat' (embedded) (required)",
                         "SRC")
    tokenizer: str = _setting("", "the base model's tokenizer directory; role tokens are added when it lacks them "
                                  "(default: the base run's tokenizer; when resuming, RUN_DIR/tokenizer)", "DIR")
    out: str = _setting("runs/sft", "run directory: config.json, metrics.jsonl, checkpoints/, tokenizer/", "RUN_DIR")
    checkpoint: str = _setting("", "the base model (a run dir, step dir or .safetensors file), or 'latest' to "
                                   "resume the newest checkpoint in --out (required)", "BASE|latest")
    context_length: int = _setting(0, "tokens per packed row (0: the base model's context length)")
    batch_size: int = _setting(8, "packed rows per micro-batch per process")
    epochs: float = _setting(3.0, "passes over the training conversations (sets the steps unless --train_steps)")
    train_steps: int = _setting(0, "optimizer steps in the whole run (0: from --epochs)")
    lr: float = _setting(1e-5, "peak learning rate after warmup")
    warmup_steps: int = _setting(0, "linear warmup steps")
    weight_decay: float = _setting(0.0, "AdamW decoupled weight decay (matrices only, unless --decay_all)")
    eval_every: int = _setting(100, "evaluate on the held-out conversations every N steps and at the end "
                                    "(0: only at the end)")
    eval_steps: int = _setting(20, "held-out batches (batch_size x world size rows each) per evaluation")
    val_fraction: float = _setting(0.05, "share of the conversations held out for evaluation (chosen by hash)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_length < 0 or self.train_steps < 0:
            raise ValueError("--context_length and --train_steps must be >= 0 (0: from the base model / --epochs)")
        if not self.epochs > 0 and not self.train_steps:
            raise ValueError(f"--epochs must be positive when --train_steps is 0, got {self.epochs}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
