"""Supervised fine-tuning (`gpt25 sft`): `FineTuning`, the trainer's task that trains a base checkpoint on packed
conversations (assistant tokens only) into a chat model, saving its extended tokenizer as RUN_DIR/tokenizer.

Manual: docs/chat.md ("`gpt25 sft`")
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

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
from gpt25.model import ModelConfig, TransformerLM
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import add_chat_tokens
from gpt25.train import distributed
from gpt25.train.config import SFTConfig
from gpt25.train.trainer import Task, Trainer, train


def sft(config: SFTConfig) -> dict[str, Any]:
    """Run (or resume) one fine-tuning run; returns the trainer's summary plus the conversation counts."""
    return train(config, FineTuning())


class FineTuning(Task):
    """The trainer's task on packed conversations, from a base checkpoint (its tokenizer gains the role tokens)."""

    ignore_index = IGNORE_INDEX  # only the assistant's tokens are trained on

    def setup(self, config: SFTConfig, context: distributed.DistributedContext) -> tuple[SFTConfig, Tokenizer,
                                                                                          ModelConfig]:
        if not config.data:
            raise ValueError("--data is required: conversations (.jsonl, .parquet, hf:NAME or python-docs-chat)")
        self.run_dir = Path(config.out)
        self.source, meta = self.source_checkpoint(config)
        base_config = ModelConfig.from_dict(meta["model_config"])
        self.tokenizer = self.chat_tokenizer(config, base_config.vocab_size, meta)
        model_config = dataclasses.replace(base_config,
                                           vocab_size=max(base_config.vocab_size, self.tokenizer.vocab_size))
        context_length = config.context_length or base_config.context_length
        if context_length > base_config.context_length:
            raise ValueError(f"--context_length {context_length} is longer than the base model's "
                             f"{base_config.context_length}; give at most that")
        self.train_rows, self.val_rows, self.stats = self.load_conversations(config, context_length)
        config = dataclasses.replace(config, tokenizer=str(self.run_dir / "tokenizer"), context_length=context_length)
        rows_per_step = config.batch_size * config.accumulation_for(context.world_size) * context.world_size
        train_steps = config.train_steps or math.ceil(config.epochs * len(self.train_rows) / rows_per_step)
        return dataclasses.replace(config, train_steps=train_steps), self.tokenizer, model_config

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
        path = ckpt.resolve_checkpoint(config.checkpoint)  # a FileNotFoundError saying what it expects
        meta = ckpt.read_meta(path)
        if not meta["model_config"]:
            raise ValueError(f"{path} holds no TransformerLM (no model config); pass a gpt25 checkpoint")
        return path, meta

    def chat_tokenizer(self, config: SFTConfig, base_vocab_size: int, meta: dict) -> Tokenizer:
        """The base tokenizer with the role tokens, checked to fit the base model (or, resuming, the run's)."""
        saved = self.run_dir / "tokenizer"
        resuming = config.checkpoint == "latest"
        directory = Path(config.tokenizer) if config.tokenizer else saved if resuming else \
            ckpt.find_tokenizer_dir(config.checkpoint)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {directory} not found; pass the base model's --tokenizer DIR")
        base = Tokenizer.load(directory)
        if not resuming:
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

    def base_model(self, config: SFTConfig) -> TransformerLM | None:
        """The base model grown to the chat vocab; resuming, none (`resume` loads the run's checkpoint)."""
        if self.source is None:
            return None
        model, _ = ckpt.load_model(self.source)
        model.grow_vocab(max(model.config.vocab_size, self.tokenizer.vocab_size))
        return model.train()

    def resume_source(self, config: SFTConfig) -> str:
        """--checkpoint latest resumes as `gpt25 train` does; a base checkpoint starts step 0 in a fresh --out."""
        return config.checkpoint if config.checkpoint == "latest" else ""

    def loader(self, trainer: Trainer) -> PackedLoader:
        config, context = trainer.config, trainer.context
        self.eval_rows = config.eval_steps * config.batch_size * context.world_size
        return PackedLoader(self.train_rows, config.batch_size, rank=context.rank, world_size=context.world_size,
                            seed=config.seed, device=context.device)

    def on_start(self, trainer: Trainer) -> None:
        """The extended tokenizer beside config.json (RUN_DIR/tokenizer), and the data counts."""
        if not (self.run_dir / "tokenizer").is_dir():
            self.tokenizer.save(self.run_dir / "tokenizer")
        num_val = f", {len(self.val_rows):,} held-out rows" if len(self.val_rows) else ", none held out"
        trainer.log_line(f"data: {self.stats.report()}; {len(self.train_rows):,} training rows of "
                         f"{trainer.config.context_length + 1} tokens{num_val}; {trainer.config.train_steps} steps")

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        """Held-out assistant-token loss, perplexity and mean token accuracy (nothing when none is held out)."""
        if not len(self.val_rows):
            return {}
        result = evaluate_assistant_loss(trainer.eval_model(), self.val_rows, batch_size=trainer.config.batch_size,
                                         device=trainer.context.device, max_rows=self.eval_rows,
                                         autocast_dtype=trainer.autocast_dtype)
        return {name: result[name] for name in ("val_loss", "val_perplexity", "val_accuracy")}

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        return {"val_accuracy": trainer.last_eval.get("val_accuracy"), "epochs": trainer.loader.epoch,
                "conversations": self.stats.kept, "skipped": dict(self.stats.skipped), "cut": self.stats.cut,
                "tokenizer": str(self.run_dir / "tokenizer")}
