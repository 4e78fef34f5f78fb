"""The shard format and its reader: header fields, dtypes, and damaged or foreign files refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpt25.data import iter_shards, load_split, read_manifest
from gpt25.data.shards import HEADER, MAGIC, ShardFile, dtype_for_vocab, read_shard, verify_shards
from gpt25.tokenizer import Tokenizer


def write_shard(path: Path, tokens: np.ndarray, dtype: np.dtype) -> dict:
    shard = ShardFile(path, dtype)
    shard.append(tokens[:3])
    shard.append(tokens[3:])
    return shard.finish()


@pytest.mark.parametrize("vocab_size, itemsize", [(300, 2), (65_536, 2), (65_537, 4), (200_000, 4)])
def test_dtype_follows_vocab_size(vocab_size: int, itemsize: int) -> None:
    assert dtype_for_vocab(vocab_size).itemsize == itemsize


@pytest.mark.parametrize("vocab_size", [50_257, 100_000])
def test_shard_round_trip_and_header(tmp_path: Path, vocab_size: int) -> None:
    tokens = np.array([0, 1, vocab_size - 1, 7, 65_535 % vocab_size, 42], dtype=np.int64)
    dtype = dtype_for_vocab(vocab_size)
    entry = write_shard(tmp_path / "train_000000.bin", tokens, dtype)
    raw = (tmp_path / "train_000000.bin").read_bytes()
    magic, version, dtype_code, count = HEADER.unpack(raw[: HEADER.size])
    assert (magic, version, dtype_code, count) == (MAGIC, 1, dtype.itemsize, 6)
    assert len(raw) == HEADER.size + 6 * dtype.itemsize == entry["bytes"]
    read = read_shard(tmp_path / "train_000000.bin")
    assert isinstance(read, np.memmap) and read.dtype == dtype
    np.testing.assert_array_equal(read, tokens)
    assert not list(tmp_path.glob(".*.tmp"))


def test_truncated_shard_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "val_000000.bin"
    write_shard(path, np.arange(10), np.dtype("<u2"))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"truncated: header says 10 tokens \(44 bytes\), file has 41 bytes"):
        read_shard(path)
    path.write_bytes(b"GPT25")
    with pytest.raises(ValueError, match="shorter than the header"):
        read_shard(path)


def test_foreign_and_trailing_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not a gpt25 token shard"):
        read_shard(path)
    write_shard(path, np.arange(4), np.dtype("<u2"))
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(ValueError, match="longer than its header says"):
        read_shard(path)


def test_iter_shards_and_load_split(prepared: tuple[Path, list[str]], tokenizer: Tokenizer) -> None:
    data_dir, _ = prepared
    manifest = read_manifest(data_dir)
    shards = list(iter_shards(data_dir, "train"))
    assert [len(shard) for shard in shards] == [entry["tokens"] for entry in manifest["splits"]["train"]["shards"]]
    assert all(len(shard) == 500 for shard in shards[:-1]) and 0 < len(shards[-1]) <= 500
    tokens = load_split(data_dir, "train", tokenizer)
    assert tokens.ndim == 1 and len(tokens) == manifest["splits"]["train"]["tokens"]
    np.testing.assert_array_equal(tokens, np.concatenate(shards))
    assert verify_shards(data_dir) == []


def test_other_tokenizer_is_refused(prepared: tuple[Path, list[str]], shared_data: Path) -> None:
    data_dir, _ = prepared
    gpt2 = Tokenizer.from_files(
        shared_data / "gpt2" / "gpt2_vocab.json", shared_data / "gpt2" / "gpt2_merges.txt", ["<|endoftext|>"]
    )
    with pytest.raises(ValueError, match="were made with tokenizer .* not the given one"):
        load_split(data_dir, "val", gpt2)


def test_incomplete_or_missing_manifest(tmp_path: Path, prepared: tuple[Path, list[str]]) -> None:
    with pytest.raises(FileNotFoundError, match="no manifest.json in .*gpt25 data prepare"):
        read_manifest(tmp_path)
    data_dir, _ = prepared
    manifest = json.loads((data_dir / "manifest.json").read_text())
    manifest["complete"] = False
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unfinished .*rerun the same command to resume"):
        load_split(tmp_path, "train")


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{", r"is not valid JSON \(Expecting property name enclosed in double quotes: line 1 column 2 \(char 1\)\)"),
        ("[]", "is not a gpt25 token-shard manifest"),
        ('{"format": "gpt25-token-shards"}', r"is damaged: complete is missing \(expected bool\)"),
        ("splits.val.documents=3.5", r"is damaged: splits.val.documents is a float \(expected int\)"),
        ("splits.train.shards.0.next=[]", r"is damaged: splits.train.shards\[0\].next is a list \(expected dict\)"),
        ("source={}", None),
    ],
)
def test_damaged_manifest_is_a_one_line_error_naming_it(
    tmp_path: Path, prepared: tuple[Path, list[str]], content: str, problem: str | None
) -> None:
    manifest_text = content
    if "=" in content:  # a change to the good manifest
        manifest = json.loads((prepared[0] / "manifest.json").read_text())
        keys, value = content.split("=")
        *parents, last = keys.split(".")
        target = manifest
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[last] = json.loads(value)
        manifest_text = json.dumps(manifest)
    (tmp_path / "manifest.json").write_text(manifest_text)
    if problem is None:  # an unfinished run's manifest has no source counts yet
        assert read_manifest(tmp_path)["source"] == {}
        return
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'manifest.json'} {problem}[^\n]*$"):
        read_manifest(tmp_path)
