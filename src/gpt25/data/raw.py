"""`gpt25 data import-raw`: headerless token files (the GPT 2.5 recipe's fineweb_*.bin) checked in one streamed
pass, then referenced where they lie (tens of GB neither re-tokenized nor copied) or copied into shards.
Manual: docs/data.md (Token files from the GPT 2.5 recipe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gpt25.data.shards import (
    MANIFEST_NAME,
    SPLITS,
    ResumePoint,
    SplitWriter,
    dtype_for_vocab,
    file_fingerprint,
    new_manifest,
)
from gpt25.files import atomic_folder, write_json_atomic
from gpt25.tokenizer import Tokenizer

RAW_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
CHUNK_BYTES = 1 << 24  # per read: large enough for disk speed, small enough to keep memory flat
SHARD_TOKENS = 100_000_000  # --copy: tokens per shard by default, as `gpt25 data prepare` writes them


@dataclass
class RawImportConfig:
    train: list[str]  # token files of the train split, in order
    val: list[str]
    tokenizer_dir: str  # the tokenizer the files were made with (its vocab size bounds the ids)
    out_dir: str
    dtype: str = "uint16"  # the files' token type, little-endian: a key of RAW_DTYPES
    copy: bool = False  # write shards instead of referencing the files
    shard_tokens: int = SHARD_TOKENS  # with copy: tokens per shard
    force: bool = False  # replace an existing out_dir
    progress: bool = True


def import_raw(config: RawImportConfig) -> dict[str, Any]:
    """Check the token files and write `config.out_dir` (manifest, shards with `copy`); returns the manifest."""
    if config.shard_tokens < 1:
        raise ValueError(f"--shard_tokens must be >= 1, got {config.shard_tokens}")
    files = {"train": _token_files(config.train, "--train"), "val": _token_files(config.val, "--val")}
    out_dir = Path(config.out_dir).absolute()
    _check_out(out_dir, [path for paths in files.values() for path in paths], config.force)
    tokenizer = Tokenizer.load(config.tokenizer_dir)
    with atomic_folder(out_dir) as temporary:
        manifest = _import_into(temporary, files, tokenizer, config)
        tokenizer.save(temporary / "tokenizer")  # `gpt25 train --data` takes DATA/tokenizer by default
        write_json_atomic(temporary / MANIFEST_NAME, manifest)
    return manifest


def _token_files(names: list[str], flag: str) -> list[Path]:
    if not names:
        raise ValueError(f"no {flag} token file given; pass one or more .bin files")
    paths = [Path(name).absolute() for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{flag} token file {path} does not exist; check the path")
    return paths


def _check_out(out_dir: Path, token_files: list[Path], force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} is a file, not a folder; choose another --out")
    if out_dir.exists() and not force:
        raise FileExistsError(f"--out {out_dir} already exists; choose another --out or pass --force to replace it")
    resolved_out = out_dir.resolve()
    inside = [path for path in token_files if resolved_out in path.resolve().parents]
    if inside:
        raise ValueError(f"--out {out_dir} holds the token file {inside[0]}, which it would replace; choose another --out")


def _import_into(out_dir: Path, files: dict[str, list[Path]], tokenizer: Any, config: RawImportConfig) -> dict[str, Any]:
    dtype = dtype_for_vocab(tokenizer.vocab_size) if config.copy else RAW_DTYPES[config.dtype]
    total_bytes = sum(path.stat().st_size for paths in files.values() for path in paths)
    with tqdm(total=total_bytes, desc="import-raw", unit="B", unit_scale=True, disable=not config.progress,
              mininterval=0.5) as bar:
        # "next" in the copied shards' entries is for a resuming prepare; import-raw does not resume
        writers = {split: SplitWriter(split, out_dir, config.shard_tokens, dtype, [], ResumePoint(), lambda: None)
                   if config.copy else None for split in SPLITS}
        splits = {split: _import_split(files[split], tokenizer, config.dtype, bar, writers[split]) for split in SPLITS}
    settings = {"raw_files": {split: [str(path) for path in files[split]] for split in SPLITS},
                "raw_dtype": config.dtype, "copy": config.copy}
    source = {"documents": sum(info["documents"] for info in splits.values()), "bytes": total_bytes, "skipped_lines": 0}
    return new_manifest(tokenizer, dtype, settings) | {"complete": True, "source": source, "splits": splits}


def _import_split(
    paths: list[Path], tokenizer: Any, raw_dtype_name: str, bar: tqdm, writer: SplitWriter | None
) -> dict[str, Any]:
    """One split's manifest entry: its files scanned in order, referenced, or copied by `writer`."""
    raw_dtype = RAW_DTYPES[raw_dtype_name]
    entries, num_documents = [], 0
    for path in paths:
        num_tokens, num_eot = scan_token_file(path, raw_dtype, tokenizer.vocab_size, tokenizer.eot_id, bar,
                                              (lambda tokens: writer.add_document(0, tokens)) if writer else None)
        num_documents += num_eot
        if writer is None:
            entries.append(_reference_entry(path, num_tokens * raw_dtype.itemsize, num_tokens))
    if writer is not None:
        writer.close(0)
        entries = writer.entries
    return {"tokens": sum(entry["tokens"] for entry in entries), "documents": num_documents, "shards": entries}


def _reference_entry(path: Path, scanned_bytes: int, num_tokens: int) -> dict[str, Any]:
    """The manifest entry of a referenced file, fingerprinted after the scan (refused if it changed meanwhile)."""
    if path.stat().st_size != scanned_bytes:
        raise ValueError(f"token file {path} changed while it was being checked; rerun when nothing writes to it")
    return {"file": str(path), "tokens": num_tokens, "bytes": scanned_bytes, "fingerprint": file_fingerprint(path)}


def scan_token_file(path: Path, dtype: np.dtype, vocab_size: int, eot_id: int, bar: tqdm | None = None,
                    sink: Callable[[np.ndarray], None] | None = None) -> tuple[int, int]:
    """(tokens, <|endoftext|> ids) of a token file, every id checked against `vocab_size`; `sink` gets each block."""
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise ValueError(
            f"token file {path} is {size} bytes, not a whole number of {dtype.name} tokens; "
            "it is empty or truncated, or --dtype is wrong"
        )
    buffer = np.empty(CHUNK_BYTES // dtype.itemsize, dtype=dtype)  # one buffer read into again and again: flat memory
    num_tokens = num_eot = 0
    with open(path, "rb") as file:
        while num_bytes := file.readinto(buffer):
            tokens = buffer[: num_bytes // dtype.itemsize]
            if int(tokens.max()) >= vocab_size:
                offset = int(np.argmax(tokens >= vocab_size))
                raise ValueError(
                    f"token file {path}: the token at offset {num_tokens + offset:,} is id {int(tokens[offset])}, beyond "
                    f"the tokenizer's vocab of {vocab_size}; pass the tokenizer the file was made with, or the right --dtype"
                )
            num_eot += int(np.count_nonzero(tokens == eot_id))
            if sink is not None:
                sink(tokens)
            num_tokens += len(tokens)
            if bar is not None:
                bar.update(num_bytes)
    return num_tokens, num_eot

