"""Training-test fixtures: a tiny real corpus (the embedded Python-docs corpus), a 512-token BPE
tokenizer trained on it and train/val shards, built once per session; and tiny-model settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CORPUS_CHARS = 400_000
TINY_MODEL = ["--d_model", "32", "--num_layers", "2", "--num_heads", "2", "--d_ff", "64", "--context_length", "32"]


@pytest.fixture(scope="session")
def corpus_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"data": shard dir, "tokenizer": tokenizer dir} for ~400 kB of real English/Python-docs text."""
    from gpt25.data.prepare import PrepareConfig, prepare
    from gpt25.data.sources import iter_default_corpus, write_corpus_file
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


def tiny_config(corpus_data: dict[str, Path], out: Path, **overrides):
    """A TrainConfig for a 2-layer, d_model 32 model: a step takes milliseconds on one core."""
    from gpt25.train import TrainConfig

    settings = dict(data=str(corpus_data["data"]), tokenizer=str(corpus_data["tokenizer"]), out=str(out),
                    d_model=32, num_layers=2, num_heads=2, d_ff=64, context_length=32, batch_size=8,
                    train_steps=20, lr=3e-3, warmup_steps=2, eval_every=0, eval_steps=4, save_every=0,
                    log_every=1, device="cpu", seed=0)
    return TrainConfig(**(settings | overrides))


def train_command(corpus_data: dict[str, Path], out: Path, *extra: str, nproc: int = 1) -> list[str]:
    """`gpt25 train` (under torchrun when nproc > 1) with the tiny model and corpus."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", "0", "-m", "gpt25"] if nproc > 1 else [sys.executable, "-m", "gpt25"]
    return launcher + ["train", "--data", str(corpus_data["data"]), "--tokenizer", str(corpus_data["tokenizer"]),
                       "--out", str(out), "--device", "cpu", "--seed", "0", "--batch_size", "8",
                       "--lr", "3e-3", "--warmup_steps", "2", "--eval_every", "0", "--eval_steps", "4",
                       "--log_every", "1", *TINY_MODEL, *extra]


def run_command(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command with one thread per process (as torchrun does), failing loudly with its output."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result
