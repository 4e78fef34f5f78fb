"""`gpt25 data prepare`: prepare(PrepareConfig) streams documents through worker processes, in order, into
train/val token shards + manifest.json (a document's split is its hash's), and a rerun resumes after the last
finished shard. Manual: docs/data.md (Split, How the work is split, Resume).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
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
    new_manifest,
    read_manifest,
    shard_is_valid,
)
from gpt25.data.sources import (
    BlockReport,
    SourceStats,
    SourceTask,
    TaskLines,
    check_sources,
    iter_documents,
    plan_tasks,
    range_task_bytes,
    read_task,
)
from gpt25.files import new_folders, write_json_atomic
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.workers import map_in_order

DEFAULT_VAL_FRACTION = 0.01
BATCH_CHARS = 1 << 19  # text per worker task: large enough to amortise IPC, small enough to stay ordered


@dataclass
class PrepareConfig:
    sources: list[str]  # paths / globs / "python-docs" / "hf:NAME[:CONFIG]"
    tokenizer_dir: str  # a folder written by Tokenizer.save
    out_dir: str
    val_fraction: float | None = None  # default DEFAULT_VAL_FRACTION when val_docs is not given either
    val_docs: int | None = None
    workers: int = field(default_factory=lambda: available_cpus())
    shard_tokens: int = 100_000_000  # tokens per shard (the last one of a split is shorter)
    doc_split: str = "blank-line"  # plain-text files: "blank-line" or "file"
    text_field: str = "text"  # JSONL / Parquet / Hugging Face field holding the text
    data_files: list[str] | None = None  # for hf: sources read from disk, e.g. hf:json
    hf_split: str = "train"
    overwrite: bool = False  # start over instead of resuming a different earlier run
    progress: bool = True

    def __post_init__(self) -> None:
        if self.val_fraction is not None and self.val_docs is not None:
            raise ValueError("give either --val_docs or --val_fraction, not both")
        if self.val_fraction is None and self.val_docs is None:
            self.val_fraction = DEFAULT_VAL_FRACTION
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_docs is not None and self.val_docs < 0:
            raise ValueError(f"--val_docs must be >= 0, got {self.val_docs}")
        if self.workers < 1 or self.shard_tokens < 1:
            raise ValueError(f"--workers and --shard_tokens must be >= 1, got {self.workers} and {self.shard_tokens}")
        if not self.sources:
            raise ValueError("no --source given; pass files, folders, globs, python-docs or hf:NAME")


def available_cpus() -> int:
    """CPU cores this process may use (respects affinity / container limits where the OS reports them)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _digest(data: bytes) -> bytes:
    """The 64-bit BLAKE2b hash that decides a document's split (stable across runs, machines and Pythons)."""
    return hashlib.blake2b(data, digest_size=8).digest()


def _is_val(documents: list[bytes], val_threshold: int) -> np.ndarray:
    """(documents,) bool: whether each UTF-8 document goes to validation (its hash <= val_threshold)."""
    if val_threshold < 0:
        return np.zeros(len(documents), dtype=bool)
    return np.frombuffer(b"".join(map(_digest, documents)), dtype=">u8") <= np.uint64(val_threshold)


def prepare(config: PrepareConfig) -> dict[str, Any]:
    """Tokenize the sources into `config.out_dir`, resuming an unfinished run; returns the manifest."""
    source_files = check_sources(config.sources, config.data_files, exclude=config.out_dir)
    tokenizer = Tokenizer.load(config.tokenizer_dir)
    out_dir = Path(config.out_dir)
    blocking = next((folder for folder in (out_dir, *out_dir.parents) if folder.exists() and not folder.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"--out {out_dir}: {blocking} is a file, not a folder; choose another --out")
    with new_folders(out_dir):
        return _prepare_into(config, tokenizer, out_dir, source_files)


def _prepare_into(config: PrepareConfig, tokenizer: Any, out_dir: Path, source_files: list[list]) -> dict[str, Any]:
    dtype = dtype_for_vocab(tokenizer.vocab_size)
    settings = _settings(config, tokenizer, dtype, source_files)
    manifest = _start_or_resume(out_dir, settings, config.overwrite, tokenizer, dtype)
    if manifest["complete"]:
        return manifest
    total_bytes = file_bytes = range_task_bytes(config.sources, settings["source_files"])
    if "val_threshold" not in manifest:
        manifest["val_threshold"], counted_bytes = _val_threshold(config)
        total_bytes = counted_bytes if file_bytes is None else file_bytes
    started = time.perf_counter()
    source, num_tokenized = _run(config, tokenizer, dtype, out_dir, manifest, total_bytes, file_bytes is not None)
    _finalize(
        manifest, source, {"documents_tokenized": num_tokenized, "seconds": round(time.perf_counter() - started, 3)}
    )
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    for split in SPLITS:
        if manifest["splits"][split]["tokens"] == 0:
            warnings.warn(
                f"split {split!r} got no documents; pass a larger --val_fraction / --val_docs or more data",
                stacklevel=3,  # the caller of prepare
            )
    return manifest


def _settings(config: PrepareConfig, tokenizer: Any, dtype: np.dtype, source_files: list[list]) -> dict[str, Any]:
    """What must match for a rerun to resume the shards already in --out."""
    options = ("doc_split", "text_field", "data_files", "hf_split", "val_fraction", "val_docs", "shard_tokens")
    return {
        "sources": list(config.sources),
        "source_files": source_files,
        **{name: getattr(config, name) for name in options},
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
    }


def _start_or_resume(out_dir: Path, settings: dict[str, Any], overwrite: bool, tokenizer: Any,
                     dtype: np.dtype) -> dict[str, Any]:
    """A fresh manifest, or the earlier run's one with only its valid prefix of shards kept."""
    for leftover in out_dir.glob(".*.tmp"):
        leftover.unlink()
    if (out_dir / MANIFEST_NAME).is_file() and not overwrite:
        manifest = read_manifest(out_dir)
        if manifest["settings"] == settings:
            _keep_valid_prefix(out_dir, manifest)
            return manifest
        changed = ", ".join(key for key in settings if manifest["settings"].get(key) != settings[key])
        raise FileExistsError(
            f"--out {out_dir} holds shards from a different prepare ({changed} changed); choose another --out or pass --force"
        )
    for old in [*out_dir.glob("train_*.bin"), *out_dir.glob("val_*.bin"), out_dir / MANIFEST_NAME]:
        old.unlink(missing_ok=True)
    return new_manifest(tokenizer, dtype, settings)


def _keep_valid_prefix(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Cut each split's shards at the first one damaged or missing; the run is then unfinished."""
    for split in SPLITS:
        entries = manifest["splits"][split]["shards"]
        num_valid = next(
            (i for i, entry in enumerate(entries) if not shard_is_valid(out_dir / entry["file"], entry)), len(entries)
        )
        if num_valid < len(entries):
            manifest["complete"] = False
            del entries[num_valid:]


def _val_threshold(config: PrepareConfig) -> tuple[int, int | None]:
    """(validation hash threshold, total source bytes when a pre-pass counted them)."""
    if not config.val_docs:
        return int((config.val_fraction or 0.0) * 2**64) - 1, None  # hashes below the fraction; -1 (none) for 0
    totals = {"documents": 0, "bytes": 0}

    def hashes() -> Iterator[int]:
        documents = iter_documents(config.sources, **_source_options(config))
        with warnings.catch_warnings():  # the main pass warns about the same non-UTF-8 lines
            warnings.simplefilter("ignore")
            for text in tqdm(documents, desc="hash (val split)", unit=" docs", disable=not config.progress):
                data = text.encode("utf-8")
                totals["documents"] += 1
                totals["bytes"] += len(data)
                yield int.from_bytes(_digest(data), "big")

    smallest = heapq.nsmallest(config.val_docs, hashes())  # memory O(val_docs); those at or below the last are val
    if config.val_docs >= totals["documents"]:
        raise ValueError(f"--val_docs {config.val_docs} leaves no training documents (the sources hold "
                         f"{totals['documents']}); pass a smaller --val_docs")
    return smallest[-1], totals["bytes"]


def _source_options(config: PrepareConfig) -> dict[str, Any]:
    return {"doc_split": config.doc_split, "text_field": config.text_field, "data_files": config.data_files,
            "hf_split": config.hf_split, "exclude": config.out_dir}


def _run(config: PrepareConfig, tokenizer: Any, dtype: np.dtype, out_dir: Path, manifest: dict[str, Any],
         total_bytes: int | None, counts_file_bytes: bool) -> tuple[dict[str, Any], int]:
    """The streaming pass (read, assign, tokenize, write shards); returns (source counters, documents tokenized)."""
    shards = {split: manifest["splits"][split]["shards"] for split in SPLITS}
    resume = {split: ResumePoint(**shards[split][-1]["next"]) if shards[split] else ResumePoint() for split in SPLITS}
    manifest_path = out_dir / MANIFEST_NAME
    writers = {split: SplitWriter(split, out_dir, config.shard_tokens, dtype, shards[split], resume[split],
                                  lambda: write_json_atomic(manifest_path, manifest))
               for split in SPLITS}
    stats = SourceStats()
    task_lines = TaskLines(stats)
    counters = {"documents": 0, "bytes": 0, "tokens": 0, "tokenized": 0}
    planned = plan_tasks(config.sources, BATCH_CHARS, stats=stats, **_source_options(config))
    tasks = (_Task(task, manifest["val_threshold"], resume, dtype) for task in planned)
    caught_up_at = max(point.doc_index for point in resume.values())
    with tqdm(total=total_bytes, desc="prepare", unit="B", unit_scale=True, disable=not config.progress,
              mininterval=0.5) as bar:
        try:
            for task, encoded in _encoded_in_order(tasks, config.workers, tokenizer, counters, caught_up_at):
                task_lines.report(task.source, encoded.block)
                _write_batch(encoded, writers, counters["documents"])
                counters["documents"] += encoded.num_documents
                counters["bytes"] += encoded.num_bytes
                counters["tokens"] += len(encoded.tokens)
                counters["tokenized"] += len(encoded.doc_indices)
                bar.update(task.source.end - task.source.start if counts_file_bytes else encoded.num_bytes)
                bar.set_postfix(docs=counters["documents"], tokens=counters["tokens"], refresh=False)
            task_lines.close()
            for writer in writers.values():
                writer.close(counters["documents"])
        except BaseException:
            for writer in writers.values():
                writer.discard()
            raise
    source = {"documents": counters["documents"], "bytes": counters["bytes"], "skipped_lines": stats.skipped_lines,
              "files": stats.files}
    return source, counters["tokenized"]


@dataclass
class _Task:
    """One worker task: its documents, what encoding needs besides them, and while resuming its first one's number."""

    source: SourceTask
    val_threshold: int
    resume: dict[str, ResumePoint]
    dtype: np.dtype
    first_doc_index: int | None = None


@dataclass
class _EncodedBatch:
    doc_indices: np.ndarray  # (documents kept,) their numbers within the task
    is_val: np.ndarray  # (documents kept,) bool
    lengths: np.ndarray  # (documents kept,) tokens of each, <|endoftext|> included
    tokens: np.ndarray  # all their tokens, concatenated
    num_bytes: int  # UTF-8 bytes of every document of the task
    num_documents: int  # documents in the task, kept or not
    block: BlockReport | None  # for a byte-range task


def _encoded_in_order(
    tasks: Iterator[_Task], workers: int, tokenizer: Any, counters: dict[str, int], caught_up_at: int
) -> Iterator[tuple[_Task, _EncodedBatch]]:
    """(task, its _EncodedBatch) in order. Until document `caught_up_at` (a resumed run's finished shards) tasks
    are encoded here, each told its first document's number (counters["documents"], which the caller
    advances) so that the documents already written are skipped; then the workers take over."""
    while counters["documents"] < caught_up_at:
        task = next(tasks, None)
        if task is None:
            return
        task.first_doc_index = counters["documents"]
        yield task, _encode_task(tokenizer, task)
    yield from map_in_order(_encode_task, tasks, workers, tokenizer)


def _encode_task(tokenizer: Any, task: _Task) -> _EncodedBatch:
    """Assign each document its split, drop those already in that split's finished shards, tokenize the rest."""
    texts, block = read_task(task.source)
    data = [text.encode("utf-8") for text in texts]
    is_val = _is_val(data, task.val_threshold)
    offsets = np.zeros(len(data), dtype=np.int64)  # tokens of a document already in finished shards
    if task.first_doc_index is not None:
        doc_indices = np.arange(task.first_doc_index, task.first_doc_index + len(data))
        for split_is_val, point in ((False, task.resume["train"]), (True, task.resume["val"])):
            in_split = is_val == split_is_val
            offsets[in_split & (doc_indices < point.doc_index)] = -1  # all of it
            offsets[in_split & (doc_indices == point.doc_index)] = point.token_offset
    keep = np.flatnonzero(offsets >= 0)
    kept_texts = texts if len(keep) == len(data) else [texts[index] for index in keep.tolist()]
    # <|endoftext|> after every document; one written in a document is ordinary text, so the EOT ids are the ends
    tokens = tokenizer.encode_documents(kept_texts, task.dtype, specials_in_text=False)
    ends = np.flatnonzero(tokens == tokenizer.eot_id) + 1
    assert len(ends) == len(kept_texts), "ordinary text never encodes to <|endoftext|>"
    lengths = np.diff(ends, prepend=0)  # (documents kept,)
    if offsets[keep].any():
        lengths, tokens = _drop_leading_tokens(lengths, tokens, offsets[keep])
    return _EncodedBatch(keep, is_val[keep], lengths, tokens, sum(map(len, data)), len(data), block)


def _drop_leading_tokens(lengths: np.ndarray, tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove the first offsets[i] tokens of document i."""
    starts = np.cumsum(lengths) - lengths
    dropped = np.concatenate([np.arange(start, start + offset) for start, offset in zip(starts, offsets, strict=True) if offset])
    return lengths - offsets, np.delete(tokens, dropped)


def _write_batch(encoded: _EncodedBatch, writers: dict[str, SplitWriter], first_doc_index: int) -> None:
    """Hand each run of consecutive documents of one split to its writer at once."""
    run_starts = np.flatnonzero(np.diff(encoded.is_val)) + 1
    bounds = [0, *run_starts.tolist(), len(encoded.is_val)]
    token_ends = np.cumsum(encoded.lengths).tolist()
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end == start:
            continue
        split = "val" if encoded.is_val[start] else "train"
        first_token = token_ends[start - 1] if start else 0
        tokens = encoded.tokens[first_token : token_ends[end - 1]]
        doc_indices = (first_doc_index + encoded.doc_indices[start:end]).tolist()
        writers[split].add_documents(doc_indices, encoded.lengths[start:end], tokens)


def _finalize(manifest: dict[str, Any], source: dict[str, Any], last_run: dict[str, Any]) -> None:
    if source["documents"] == 0:
        raise ValueError(
            f"the sources {manifest['settings']['sources']} yielded no documents; check --source, --doc_split and --text_field"
        )
    manifest["complete"] = True
    manifest["source"] = source
    manifest["last_run"] = last_run  # a resumed run tokenizes only the documents after the finished shards
    for split in SPLITS:
        entries = manifest["splits"][split]["shards"]
        manifest["splits"][split]["tokens"] = sum(entry["tokens"] for entry in entries)
        manifest["splits"][split]["documents"] = entries[-1]["next"]["num_docs"] if entries else 0
