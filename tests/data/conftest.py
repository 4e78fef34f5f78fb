"""Fixtures for the data tests: a tiny BPE tokenizer trained here, synthetic documents, a prepared folder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gpt25.data.prepare import PrepareConfig, prepare
from gpt25.tokenizer import Tokenizer, train_bpe

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "then",
    "ran",
    "away",
    "quickly",
    "über",
    "naïve",
    "日本",
    "🙂",
    "data",
    "token",
    "shard",
]


def make_documents(num_documents: int, seed: int = 0) -> list[str]:
    """Deterministic documents of 3-60 words, some with several lines and non-ASCII text."""
    rng = random.Random(seed)
    documents = []
    for index in range(num_documents):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(rng.randint(1, 3))]
        documents.append(f"Doc {index}: " + "\n".join(lines))
    return documents


def write_text_source(path: Path, documents: list[str]) -> Path:
    """A plain-text file with the documents separated by blank lines."""
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


@pytest.fixture(name="make_documents", scope="session")
def make_documents_fixture():
    return make_documents


@pytest.fixture(name="write_text_source", scope="session")
def write_text_source_fixture():
    return write_text_source


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320-token byte-level BPE (with <|endoftext|>) trained on the synthetic documents, saved to a folder."""
    folder = tmp_path_factory.mktemp("tokenizer")
    corpus = write_text_source(folder / "corpus.txt", make_documents(300, seed=123))
    vocab, merges = train_bpe(corpus, 320, ["<|endoftext|>"], num_workers=1)
    Tokenizer(vocab, merges, ["<|endoftext|>"]).save(folder / "tok")
    return folder / "tok"


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> tuple[Path, list[str]]:
    """(data folder, its source documents): 400 documents in shards of 500 tokens, 10% validation."""
    folder = tmp_path_factory.mktemp("prepared")
    documents = make_documents(400)
    source = write_text_source(folder / "source.txt", documents)
    config = PrepareConfig(
        sources=[str(source)],
        tokenizer_dir=str(tokenizer_dir),
        out_dir=str(folder / "out"),
        val_fraction=0.1,
        workers=1,
        shard_tokens=500,
        progress=False,
    )
    prepare(config)
    return folder / "out", documents
