"""Fixtures for the tokenizer tests: GPT-2's tokenizer (ours and tiktoken's) built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpt25.tokenizer import GPT2_PATTERN, Tokenizer

# Same location rule as tests/conftest.py's `shared_data`, which is function-scoped; these are session-scoped.
SHARED_DATA = Path(os.environ.get("GPT25_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
END_OF_TEXT = "<|endoftext|>"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (set GPT25_SHARED_DATA to run this test)")
    return path


@pytest.fixture(scope="session")
def gpt2_files() -> tuple[Path, Path]:
    folder = _require(SHARED_DATA / "gpt2")
    return folder / "gpt2_vocab.json", folder / "gpt2_merges.txt"


@pytest.fixture(scope="session")
def gpt2_tokenizer(gpt2_files) -> Tokenizer:
    return Tokenizer.from_files(*gpt2_files, special_tokens=[END_OF_TEXT])


def build_pure_python(make_tokenizer):
    """make_tokenizer() with GPT25_PURE_PYTHON=1: the tokenizer encodes without the C extension."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPT25_PURE_PYTHON", "1")
        tokenizer = make_tokenizer()
    assert type(tokenizer._encoder).__name__ == "PythonEncoder"
    return tokenizer


@pytest.fixture(scope="session")
def python_gpt2_tokenizer(gpt2_files) -> Tokenizer:
    """GPT-2's tokenizer on the pure-Python encoder (what runs where the C extension is not built)."""
    return build_pure_python(lambda: Tokenizer.from_files(*gpt2_files, special_tokens=[END_OF_TEXT]))


@pytest.fixture(scope="session")
def pure_python():
    """build_pure_python, for tests."""
    return build_pure_python


@pytest.fixture(scope="session")
def tiktoken_gpt2(gpt2_tokenizer):
    """tiktoken's GPT-2 encoding built from the same files (tiktoken cannot download here)."""
    import tiktoken

    ranks = {token: token_id for token_id, token in gpt2_tokenizer.vocab.items() if token_id != 50256}
    return tiktoken.Encoding(name="gpt2-files", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={END_OF_TEXT: 50256})


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _require(SHARED_DATA / "fixtures")


@pytest.fixture(scope="session")
def english_dir() -> Path:
    return _require(SHARED_DATA / "english")


@pytest.fixture(scope="session")
def small_tokenizer(fixtures_dir) -> Tokenizer:
    """A tokenizer trained on corpus.en at vocab 500 (the reference-merges setting)."""
    from gpt25.tokenizer import train_bpe

    vocab, merges = train_bpe(fixtures_dir / "corpus.en", 500, [END_OF_TEXT])
    return Tokenizer(vocab, merges, [END_OF_TEXT])
