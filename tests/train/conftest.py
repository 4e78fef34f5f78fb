"""Training-test fixtures: a tiny real corpus (the embedded Python-docs corpus), a 512-token BPE
tokenizer trained on it and train/val shards, built once per session; and tiny-model settings."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from train_helpers import TINY_MODEL

CORPUS_CHARS = 400_000


@pytest.fixture(scope="session")
def corpus_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"data": shard dir, "tokenizer": tokenizer dir} for ~400 kB of real English/Python-docs text."""
    from gpt25.data.default_corpus import iter_default_corpus, write_corpus_file
    from gpt25.data.prepare import PrepareConfig, prepare
    from gpt25.tokenizer import Tokenizer, train_bpe

    root = tmp_path_factory.mktemp("train_data")
    documents, size = [], 0
    for document in iter_default_corpus():
        documents.append(document)
        size += len(document)
        if size > CORPUS_CHARS:
            break
    write_corpus_file(documents, root / "corpus.txt")
    vocab, merges = train_bpe(root / "corpus.txt", 512, ["<|endoftext|>"])
    Tokenizer(vocab, merges, ["<|endoftext|>"]).save(root / "tokenizer")
    prepare(PrepareConfig(sources=[str(root / "corpus.txt")], tokenizer_dir=str(root / "tokenizer"),
                          out_dir=str(root / "data"), val_fraction=0.1, workers=1, progress=False))
    return {"data": root / "data", "tokenizer": root / "tokenizer"}


@pytest.fixture
def tiny_config(corpus_data: dict[str, Path]) -> Callable[..., Any]:
    """tiny_config(out, **overrides) -> TrainConfig of a 2-layer, d_model 32 model (milliseconds a step)."""
    from gpt25.train import TrainConfig

    def make(out: Path, **overrides: Any) -> TrainConfig:
        settings = dict(data=str(corpus_data["data"]), tokenizer=str(corpus_data["tokenizer"]), out=str(out),
                        d_model=32, num_layers=2, num_heads=2, d_ff=64, context_length=32, batch_size=8,
                        train_steps=20, lr=3e-3, warmup_steps=2, eval_every=0, eval_steps=4, save_every=0,
                        log_every=1, device="cpu", seed=0)
        return TrainConfig(**(settings | overrides))

    return make


@pytest.fixture
def train_command(corpus_data: dict[str, Path]) -> Callable[..., list[str]]:
    """train_command(out, *flags): `python -m gpt25 train` argv for the tiny model and corpus."""

    def make(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "gpt25", "train", "--data", str(corpus_data["data"]),
                "--tokenizer", str(corpus_data["tokenizer"]), "--out", str(out), "--device", "cpu", "--seed", "0",
                "--batch_size", "8", "--lr", "3e-3", "--warmup_steps", "2", "--eval_every", "0",
                "--eval_steps", "4", "--log_every", "1", *TINY_MODEL, *extra]

    return make
