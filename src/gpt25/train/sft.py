"""Supervised fine-tuning: a base checkpoint trained on conversations into a chat model (`gpt25 sft`).

`SFTTrainer` is the `Trainer` with three parts swapped: the model starts from the base checkpoint
(its tokenizer gains the role tokens and the model the matching rows, `grow_vocab`), the batches are
packed conversation rows whose untrained targets (everything but the assistant's) are left out of
the loss, and evaluation scores the held-out conversations' assistant tokens (loss and mean token
accuracy). The loop, FSDP/DDP, bf16, checkpoints, `--checkpoint latest` resume, the NaN guard,
signals and metrics.jsonl are the trainer's own. The run saves the extended tokenizer as
RUN_DIR/tokenizer, the one `gpt25 chat`, `eval` and `export` take with the run's checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from gpt25 import checkpoint as ckpt
from gpt25.data.conversations import (
    IGNORE_INDEX,
    ConversationStats,
    PackedLoader,
    PackedRows,
    is_validation,
    iter_conversations,
    pack_conversations,
)
from gpt25.eval.loss import evaluate_assistant_loss
from gpt25.model import ModelConfig, parameter_groups
from gpt25.optim import AdamW, cross_entropy
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import add_chat_tokens
from gpt25.train import distributed
from gpt25.train.config import SFTConfig
from gpt25.train.throughput import peak_flops
from gpt25.train.trainer import DTYPES, Trainer, seed_everything


def sft(config: SFTConfig) -> dict[str, Any]:
    """Run (or resume) one fine-tuning run; returns the trainer's summary plus the conversation counts."""
    caller_owns_group = torch.distributed.is_initialized()
    context = distributed.init_distributed(config.device)
    try:
        return SFTTrainer(config, context).run()
    finally:
        if not caller_owns_group:
            distributed.shutdown_distributed()


class SFTTrainer(Trainer):
    """The Trainer on packed conversations, starting from a base checkpoint (see the module docstring)."""

    def __init__(self, config: SFTConfig, context: distributed.DistributedContext) -> None:
        self.context = context
        self.run_dir = Path(config.out)
        if not config.data:
            raise ValueError("--data is required: conversations (.jsonl, .parquet, hf:NAME or python-docs-chat)")
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise NotADirectoryError(f"--out {config.out} is a file; give a directory for the run")
        source, meta = self.source_checkpoint(config)
        base_config = ModelConfig.from_dict(meta["model_config"])
        self.tokenizer = self.chat_tokenizer(config, base_config.vocab_size, meta)
        self.model_config = dataclasses.replace(
            base_config, vocab_size=max(base_config.vocab_size, self.tokenizer.vocab_size))
        context_length = config.context_length or base_config.context_length
        if context_length > base_config.context_length:
            raise ValueError(f"--context_length {context_length} is longer than the base model's "
                             f"{base_config.context_length}; give at most that")
        parallel = config.parallel if context.is_distributed else "none"
        compile_setting = "on" if config.compiles_on(context.device.type) else "off"
        seed_everything(config.seed)
        self.train_rows, self.val_rows, self.stats = self.load_conversations(config, context_length)
        rows_per_step = config.batch_size * config.grad_accum_steps * context.world_size
        train_steps = config.train_steps or math.ceil(config.epochs * len(self.train_rows) / rows_per_step)
        self.config = dataclasses.replace(
            config, tokenizer=str(self.run_dir / "tokenizer"), context_length=context_length, train_steps=train_steps,
            min_lr=config.resolved_min_lr, device=str(context.device), parallel=parallel, compile=compile_setting,
            **{name: getattr(base_config, name) for name in ("num_layers", "d_model", "num_heads", "d_ff",
                                                             "rope_theta")})
        self.dtype = DTYPES[config.dtype]
        self.model = self.build_model(source, parallel)
        self.lm = distributed.unwrap(self.model)
        self.sharded = distributed.is_fsdp(self.model)
        self.compute_loss = torch.compile(self.model_loss) if compile_setting == "on" else self.model_loss
        self.optimizer = AdamW(parameter_groups(self.lm, config.weight_decay), lr=config.lr,
                               betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay)
        self.loader = PackedLoader(self.train_rows, config.batch_size, rank=context.rank,
                                   world_size=context.world_size, seed=config.seed, device=context.device)
        self.hellaswag = self.core_tasks = None
        self.tokens_per_step = rows_per_step * context_length
        self.eval_rows = config.eval_steps * config.batch_size * context.world_size
        self.flops_per_token = self.lm.flops_per_token()
        self.peak_flops, self.peak_source = peak_flops(context.device, self.dtype)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self.last_eval: dict[str, Any] = {}

    # ----- setup pieces -----

    def source_checkpoint(self, config: SFTConfig) -> tuple[Path | None, dict]:
        """(base checkpoint to load, or None when resuming; the metadata giving the model's shape)."""
        if not config.checkpoint:
            raise ValueError("--checkpoint is required: the base model (a run dir, step dir or .safetensors file), "
                             "or 'latest' to resume --out")
        if config.checkpoint == "latest":
            found = ckpt.list_checkpoints(self.run_dir)
            if not found:
                raise FileNotFoundError(f"no checkpoint in {self.run_dir} to resume; pass the base model as "
                                        "--checkpoint BASE")
            return None, ckpt.read_meta(found[-1])
        if not Path(config.checkpoint).exists():
            raise FileNotFoundError(f"base checkpoint {config.checkpoint} not found; pass a run dir, a step dir or "
                                    "a .safetensors file")
        path = ckpt.resolve_checkpoint(config.checkpoint)
        meta = ckpt.read_meta(path)
        if not meta["model_config"]:
            raise ValueError(f"{path} holds no TransformerLM (no model config); pass a gpt25 checkpoint")
        return path, meta

    def chat_tokenizer(self, config: SFTConfig, base_vocab_size: int, meta: dict) -> Tokenizer:
        """The base tokenizer with the role tokens, checked to fit the base model (or, resuming, the run's)."""
        saved = self.run_dir / "tokenizer"
        directory = Path(config.tokenizer) if config.tokenizer else saved if config.checkpoint == "latest" else None
        if directory is None:
            raise ValueError("--tokenizer is required: the base model's tokenizer directory")
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} not found; pass the base model's --tokenizer DIR")
        base = Tokenizer.load(directory)
        if config.checkpoint != "latest":
            ckpt.check_tokenizer_matches(base, base_vocab_size, meta.get("tokenizer_fingerprint"))
        tokenizer = add_chat_tokens(base)
        if saved.is_dir() and Tokenizer.load(saved).fingerprint() != tokenizer.fingerprint():
            raise ValueError(f"{saved} holds another tokenizer than --tokenizer {directory} with role tokens; "
                             "pass the base model's tokenizer or choose a new --out")
        return tokenizer

    def load_conversations(self, config: SFTConfig, context_length: int) -> tuple[PackedRows, PackedRows,
                                                                                  ConversationStats]:
        """Read --data, hold out --val_fraction by hash, and pack both parts into rows of context_length + 1."""
        stats = ConversationStats()
        train, held_out = [], []
        for messages in iter_conversations(config.data, stats):
            (held_out if is_validation(messages, config.val_fraction) else train).append(messages)
        if not train:
            raise ValueError(f"--data {config.data} has no usable conversation to train on ({stats.report()}); "
                             "give conversations with a user and an assistant turn")
        train_rows = pack_conversations(train, self.tokenizer, context_length + 1, stats)
        val_rows = pack_conversations(held_out, self.tokenizer, context_length + 1, stats)
        if not len(train_rows):
            raise ValueError(f"--data {config.data}: no conversation left to train on ({stats.report()}); "
                             "raise --context_length")
        return train_rows, val_rows, stats

    def build_model(self, source: Path | None, parallel: str) -> torch.nn.Module:
        """The base model grown to the chat vocab and wrapped; resuming, a fresh one `resume` loads into."""
        if source is None:
            return distributed.build_model(self.model_config, self.context, parallel, self.dtype)
        model, _ = ckpt.load_model(source)
        model.grow_vocab(self.model_config.vocab_size)
        model.train()
        return distributed.parallelize(model.to(self.context.device), self.context, parallel, self.dtype)

    def resume(self) -> None:
        """--checkpoint latest resumes as `gpt25 train` does; a base checkpoint starts step 0 in a fresh --out."""
        if self.config.checkpoint == "latest":
            super().resume()
        elif ckpt.list_checkpoints(self.run_dir):
            raise FileExistsError(f"{self.run_dir} already holds checkpoints; pass --checkpoint latest to resume "
                                  "them or choose a new --out")

    def write_run_config(self) -> Path:
        """The trainer's config.json, the extended tokenizer beside it (RUN_DIR/tokenizer) and the data counts."""
        if not (self.run_dir / "tokenizer").is_dir():
            self.tokenizer.save(self.run_dir / "tokenizer")
        num_val = f", {len(self.val_rows):,} held-out rows" if len(self.val_rows) else ", none held out"
        self.log_line(f"data: {self.stats.report()}; {len(self.train_rows):,} training rows of "
                      f"{self.config.context_length + 1} tokens{num_val}; {self.config.train_steps} steps")
        return super().write_run_config()

    # ----- what the loop calls -----

    def model_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the assistant's targets only; inputs, targets (batch, seq)."""
        return cross_entropy(self.model(inputs), targets, ignore_index=IGNORE_INDEX)

    def evaluate(self) -> dict[str, Any]:
        """Held-out assistant-token loss, perplexity and mean token accuracy (nothing when none is held out)."""
        if not len(self.val_rows):
            return {}
        autocast_dtype = None if self.dtype == torch.float32 or self.sharded else self.dtype
        result = evaluate_assistant_loss(self.model if self.sharded else self.lm, self.val_rows,
                                         batch_size=self.config.batch_size, device=self.context.device,
                                         max_rows=self.eval_rows, autocast_dtype=autocast_dtype)
        return {name: result[name] for name in ("val_loss", "val_perplexity", "val_accuracy")}

    def summary(self, *args: Any) -> dict[str, Any]:
        return super().summary(*args) | {"val_accuracy": self.last_eval.get("val_accuracy"),
                                         "epochs": self.loader.epoch, "conversations": self.stats.kept,
                                         "skipped": dict(self.stats.skipped), "cut": self.stats.cut,
                                         "tokenizer": str(self.run_dir / "tokenizer")}
