"""Token shards on disk: the format, its writers (ShardFile, SplitWriter), manifest.json, and the validating
readers of shards and of the token files import-raw references (read_manifest, iter_shards, load_split,
verify_shards). Manual: docs/data.md (Shard format).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"GPT25TOK"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, format version, dtype code (bytes per token), token count; then tokens
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "gpt25-token-shards"
SPLITS = ("train", "val")
# What readers and a resuming prepare take from a manifest, and the JSON type of each.
MANIFEST_FIELDS = {
    "complete": bool, "tokenizer_fingerprint": str, "vocab_size": int, "eot_id": int, "dtype": str,
    "settings": dict, "source": dict, "splits": dict,
}
SPLIT_FIELDS = {"tokens": int, "documents": int, "shards": list}
SOURCE_FIELDS = {"documents": int, "bytes": int, "skipped_lines": int}
SHARD_FIELDS = {"file": str, "tokens": int, "bytes": int, "sha256": str, "next": dict}
RAW_FILE_FIELDS = {"file": str, "tokens": int, "bytes": int, "fingerprint": str}
FINGERPRINT_BLOCKS = 16  # blocks of FINGERPRINT_BLOCK_BYTES hashed, at evenly spaced offsets
FINGERPRINT_BLOCK_BYTES = 1 << 16


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 while every token id fits (vocab <= 65,536), else uint32."""
    return DTYPES[2] if vocab_size <= 2**16 else DTYPES[4]


def new_manifest(tokenizer: Any, dtype: np.dtype, settings: dict[str, Any]) -> dict[str, Any]:
    """An unfinished manifest, with no shards yet, for `tokenizer`'s ids stored as `dtype`."""
    return {
        "format": MANIFEST_FORMAT,
        "complete": False,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "settings": settings,
        "source": {},
        "splits": {split: {"tokens": 0, "documents": 0, "shards": []} for split in SPLITS},
    }


class ShardFile:
    """A shard being written: header placeholder, tokens appended, then renamed into place (so it is whole)."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.num_tokens = path, dtype, 0
        self.temporary = path.with_name(f".{path.name}.tmp")
        self.file = open(self.temporary, "wb")
        self.file.write(HEADER.pack(MAGIC, FORMAT_VERSION, dtype.itemsize, 0))

    def append(self, tokens: np.ndarray) -> None:
        self.file.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.num_tokens += len(tokens)

    def finish(self) -> dict[str, Any]:
        """Write the final header, fsync, rename into place; returns the shard's manifest entry."""
        self.file.seek(0)
        self.file.write(HEADER.pack(MAGIC, FORMAT_VERSION, self.dtype.itemsize, self.num_tokens))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.temporary, self.path)
        return {
            "file": self.path.name,
            "tokens": self.num_tokens,
            "bytes": self.path.stat().st_size,
            "sha256": file_sha256(self.path),
        }

    def discard(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def file_fingerprint(path: Path) -> str:
    """BLAKE2b of the size and FINGERPRINT_BLOCKS blocks at even offsets, first and last included: no mtime, so
    a copy keeps it, and no sha256, as reading tens of GB at every start is not cheap."""
    size = path.stat().st_size
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    last_start = max(size - FINGERPRINT_BLOCK_BYTES, 0)
    with open(path, "rb") as file:
        for index in range(FINGERPRINT_BLOCKS):
            file.seek(last_start * index // (FINGERPRINT_BLOCKS - 1))
            digest.update(file.read(FINGERPRINT_BLOCK_BYTES))
    return digest.hexdigest()


def is_raw_entry(entry: dict[str, Any]) -> bool:
    """True for a manifest entry that references a headerless token file (import-raw)."""
    return "fingerprint" in entry


def read_raw_file(path: Path, entry: dict[str, Any], dtype: np.dtype) -> np.ndarray:
    """Memory-map a referenced token file after checking it is the file that was imported."""
    if not path.is_file():
        raise FileNotFoundError(
            f"token file {path} is missing; put it back or rerun `gpt25 data import-raw` without it"
        )
    if path.stat().st_size != entry["bytes"] or file_fingerprint(path) != entry["fingerprint"]:
        raise ValueError(
            f"token file {path} changed since `gpt25 data import-raw` checked it; rerun `gpt25 data import-raw --force` to check it again"
        )
    if entry["tokens"] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(entry["tokens"],))


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a shard's tokens after checking its header and size (ValueError when damaged)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"shard {path} is missing; rerun `gpt25 data prepare` with the same arguments to rebuild it"
        )
    size = path.stat().st_size
    if size < HEADER.size:
        raise ValueError(
            f"shard {path} is truncated ({size} bytes, shorter than the header); rerun `gpt25 data prepare` to rebuild it"
        )
    with open(path, "rb") as file:
        magic, version, dtype_code, num_tokens = HEADER.unpack(file.read(HEADER.size))
    if magic != MAGIC:
        raise ValueError(
            f"{path} is not a gpt25 token shard (bad magic); point at a folder made by `gpt25 data prepare`"
        )
    if version != FORMAT_VERSION or dtype_code not in DTYPES:
        raise ValueError(
            f"shard {path} has format version {version} / dtype code {dtype_code}, this gpt25 reads version {FORMAT_VERSION}; rerun `gpt25 data prepare`"
        )
    dtype = DTYPES[dtype_code]
    expected = HEADER.size + num_tokens * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(
            f"shard {path} is {state}: header says {num_tokens} tokens ({expected} bytes), file has {size} bytes; rerun `gpt25 data prepare` to rebuild it"
        )
    if num_tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(num_tokens,))


def shard_is_valid(path: Path, entry: dict[str, Any]) -> bool:
    """True when the shard on disk matches its manifest entry exactly (size and sha256)."""
    return path.is_file() and path.stat().st_size == entry["bytes"] and file_sha256(path) == entry["sha256"]


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared data folder; errors say how to make or finish one."""
    path = Path(data_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {data_dir}; make one with `gpt25 data prepare --out {data_dir}`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {_REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a gpt25 token-shard manifest; point at a folder made by `gpt25 data prepare`")
    problems = (_fields_problem(value, fields, prefix) for prefix, value, fields in _manifest_parts(manifest))
    problem = next(filter(None, problems), None)
    if problem:
        raise ValueError(f"{path} is damaged: {problem}; {_REBUILD}")
    return manifest


_REBUILD = "rebuild the folder with `gpt25 data prepare ... --force`"


def _manifest_parts(manifest: dict[str, Any]) -> Iterator[tuple[str, Any, dict[str, type]]]:
    """(name prefix, JSON object, its fields) of each part of a manifest that readers and a resuming
    prepare use, outer parts first: a part is looked into only once the parts before it passed."""
    yield "", manifest, MANIFEST_FIELDS
    if manifest["source"]:  # {} until a run completes
        yield "source.", manifest["source"], SOURCE_FIELDS
    for split in SPLITS:
        prefix = f"splits.{split}."
        yield prefix, manifest["splits"].get(split), SPLIT_FIELDS
        for index, entry in enumerate(manifest["splits"][split]["shards"]):
            raw = isinstance(entry, dict) and is_raw_entry(entry)
            yield f"{prefix}shards[{index}].", entry, RAW_FILE_FIELDS if raw else SHARD_FIELDS
            if not raw:
                yield f"{prefix}shards[{index}].next.", entry["next"], RESUME_FIELDS


def _fields_problem(value: Any, fields: dict[str, type], prefix: str) -> str | None:
    """What is wrong with `value` (a JSON object whose names start with `prefix`) as far as `fields` go, or None."""
    if not isinstance(value, dict):
        return f"{prefix.rstrip('.') or 'the manifest'} is not a JSON object"
    for name, kind in fields.items():
        if not isinstance(value.get(name), kind):
            found = "missing" if name not in value else f"a {type(value[name]).__name__}"
            return f"{prefix}{name} is {found} (expected {kind.__name__})"
    return None


def iter_shards(data_dir: str | os.PathLike, split: str, tokenizer: Any = None) -> Iterator[np.ndarray]:
    """Each shard of `split` memory-mapped, in order, checked against the manifest (and the tokenizer, if given)."""
    manifest = read_manifest(data_dir)
    if not manifest["complete"]:
        raise ValueError(f"{data_dir} holds an unfinished `gpt25 data prepare`; rerun the same command to resume it")
    if tokenizer is not None and tokenizer.fingerprint() != manifest["tokenizer_fingerprint"]:
        raise ValueError(
            f"shards in {data_dir} were made with tokenizer {manifest['tokenizer_fingerprint'][:12]}, not the given "
            f"one ({tokenizer.fingerprint()[:12]}); use the tokenizer they were prepared with or rerun `gpt25 data prepare`"
        )
    for entry in manifest["splits"][split]["shards"]:
        tokens = _read_entry(data_dir, manifest, entry)
        if len(tokens) != entry["tokens"]:
            raise ValueError(
                f"shard {entry['file']} in {data_dir} holds {len(tokens)} tokens, the manifest says {entry['tokens']}; rerun `gpt25 data prepare`"
            )
        yield tokens


def _read_entry(data_dir: str | os.PathLike, manifest: dict[str, Any], entry: dict[str, Any]) -> np.ndarray:
    """The tokens of one manifest entry: a shard in `data_dir` or a referenced token file (absolute path)."""
    path = Path(data_dir) / entry["file"]
    if is_raw_entry(entry):
        return read_raw_file(path, entry, np.dtype(manifest["dtype"]).newbyteorder("<"))
    return read_shard(path)


def load_split(data_dir: str | os.PathLike, split: str, tokenizer: Any = None) -> np.ndarray:
    """All tokens of a split as one 1-D array (a memmap when it is a single shard)."""
    shards = list(iter_shards(data_dir, split, tokenizer))
    if not shards:
        raise ValueError(
            f"split {split!r} in {data_dir} is empty; prepare more documents or a larger --val_fraction / --val_docs"
        )
    return shards[0] if len(shards) == 1 else np.concatenate(shards)


def verify_shards(data_dir: str | os.PathLike) -> list[str]:
    """The problems found checking every shard (header, size, sha256; a referenced file's size and fingerprint)."""
    manifest = read_manifest(data_dir)
    problems = []
    for split in SPLITS:
        for entry in manifest["splits"][split]["shards"]:
            path = Path(data_dir) / entry["file"]
            try:
                _read_entry(data_dir, manifest, entry)
            except (ValueError, FileNotFoundError) as error:
                problems.append(str(error))
                continue
            if not is_raw_entry(entry) and not shard_is_valid(path, entry):
                problems.append(
                    f"shard {path} does not match the sha256 in the manifest; rerun `gpt25 data prepare` to rebuild it"
                )
    return problems


@dataclass
class ResumePoint:
    """Where a split's next shard starts in the source stream."""

    doc_index: int = 0  # source documents before this one are already in finished shards
    token_offset: int = 0  # tokens of that document already in finished shards
    num_docs: int = 0  # documents of this split before `doc_index`


RESUME_FIELDS = {name: int for name in asdict(ResumePoint())}  # a shard entry's "next"


@dataclass
class SplitWriter:
    """Cuts one split's tokens into shards, recording each in `entries` (the manifest's) and calling `on_shard`."""

    split: str
    out_dir: Path
    shard_tokens: int
    dtype: np.dtype
    entries: list[dict]
    resume: ResumePoint
    on_shard: Callable[[], None]
    current: ShardFile | None = None

    def __post_init__(self) -> None:
        self.num_docs = self.resume.num_docs

    def add_document(self, doc_index: int, tokens: np.ndarray) -> None:
        """Append one document's tokens (already cut at the resume offset when it is the resume document)."""
        self.num_docs += 1
        position = 0
        while position < len(tokens):
            shard = self._open_shard()
            piece = tokens[position : position + self.shard_tokens - shard.num_tokens]
            shard.append(piece)
            position += len(piece)
            if shard.num_tokens < self.shard_tokens:
                continue
            if position == len(tokens):  # the shard ends with the document: the next starts at the next one
                self._finish_shard(ResumePoint(doc_index + 1, 0, self.num_docs))
            else:  # inside the document, whose tokens before `resume.token_offset` were cut off
                offset = self.resume.token_offset if doc_index == self.resume.doc_index else 0
                self._finish_shard(ResumePoint(doc_index, offset + position, self.num_docs - 1))

    def add_documents(self, doc_indices: list[int], lengths: np.ndarray, tokens: np.ndarray) -> None:
        """Append whole documents: `tokens` is theirs concatenated, lengths[i] of them for doc_indices[i]."""
        room = self.shard_tokens - (self.current.num_tokens if self.current is not None else 0)
        if len(tokens) >= room:  # a shard ends among them: cut it where it must
            for doc_index, doc_tokens in zip(doc_indices, np.split(tokens, np.cumsum(lengths)[:-1]), strict=True):
                self.add_document(doc_index, doc_tokens)
            return
        self._open_shard().append(tokens)
        self.num_docs += len(doc_indices)

    def _open_shard(self) -> ShardFile:
        if self.current is None:
            self.current = ShardFile(self.out_dir / f"{self.split}_{len(self.entries):06d}.bin", self.dtype)
        return self.current

    def close(self, num_source_docs: int) -> None:
        if self.current is not None:
            self._finish_shard(ResumePoint(num_source_docs, 0, self.num_docs))

    def _finish_shard(self, next_point: ResumePoint) -> None:
        assert self.current is not None
        entry = self.current.finish()
        entry["next"] = asdict(next_point)
        self.entries.append(entry)
        self.current = None
        self.on_shard()

    def discard(self) -> None:
        if self.current is not None:
            self.current.discard()
