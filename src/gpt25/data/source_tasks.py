"""Documents from the source specs, read in byte ranges that parallel workers can take.

iter_documents gives every document of the sources in order (see gpt25.data.sources for the specs).
plan_tasks cuts the sources into SourceTasks for `gpt25 data prepare`'s workers: byte ranges of
plain-text and JSONL files, which the main process never reads, and groups of documents for the
rest (Parquet, Hugging Face, python-docs). read_task gives a task's documents; a range is moved to
paragraph or line starts (read_paragraph_block, read_line_block), so ranges can be cut blindly.
iter_documents reads the sources through the same tasks, so both give exactly the same documents.
TaskLines numbers within their files the lines a worker reports by their index in its block.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gpt25.data.default_corpus import iter_default_corpus
from gpt25.data.sources import (
    DEFAULT_CORPUS_SPEC,
    DOC_SPLITS,
    JSONL_SUFFIXES,
    SkippedLines,
    SourceStats,
    expand_paths,
    iter_hf_dataset,
    iter_parquet_documents,
    open_text_file,
    record_documents,
)
from gpt25.tokenizer.codec import text_groups

TEXT_BLOCK_BYTES = 1 << 20  # the byte ranges iter_documents reads a file in
BLOCK_SEARCH_BYTES = 1 << 13  # read_paragraph_block / read_line_block search windows from this size up
EMPTY_LINE_ENDS = (b"\n\n", b"\n\r\n")  # an empty line ends just after these
_BLANK_LINE_OR_END = re.compile(r"^[^\S\n]*(?:\n|\Z)", re.MULTILINE)  # a last line without "\n" can be blank too
_CARRIAGE_RETURNS = re.compile(r"\r+\n")  # "\r\n" line ends (iter_utf8_lines drops every "\r" before the "\n")


@dataclass
class SourceTask:
    """Consecutive documents of the sources for one worker: documents the main process read
    (`texts`), or a byte range of a plain-text or JSONL file that read_task reads, decodes and
    splits (the range is moved to paragraph or line starts, see read_paragraph_block and
    read_line_block, so ranges can be cut blindly)."""

    texts: list[str] | None = None
    path: str = ""  # the file, when the task is a byte range
    start: int = 0
    end: int = 0
    doc_split: str = "blank-line"  # how a plain-text range splits into documents
    text_field: str | None = None  # the field holding the text, when the file is JSONL


@dataclass
class BlockReport:
    """What read_task found in a byte range's block, by line index in the block."""

    skipped_lines: list[tuple[int, str]]  # (line index, reason) of each line skipped as not UTF-8
    num_lines: int
    bad_line: tuple[int, str] | None = None  # (line index, problem): a JSONL line that is no record


def iter_documents(
    specs: Iterable[str],
    *,
    doc_split: str = "blank-line",
    text_field: str = "text",
    data_files: list[str] | None = None,
    hf_split: str = "train",
    stats: SourceStats | None = None,
    exclude: str | os.PathLike | None = None,
) -> Iterator[str]:
    """Yield the documents of every source spec in turn (see gpt25.data.sources for the specs), read
    through the tasks the workers read; folders and globs leave out the files inside `exclude`."""
    stats = stats if stats is not None else SourceStats()
    task_lines = TaskLines(stats)
    for task in plan_tasks(specs, TEXT_BLOCK_BYTES, doc_split=doc_split, text_field=text_field,
                           data_files=data_files, hf_split=hf_split, stats=stats, exclude=exclude):
        documents, block = read_task(task)
        yield from documents  # before a bad JSONL line's error, the documents ahead of it
        task_lines.report(task, block)
    task_lines.close()


def plan_tasks(specs: Iterable[str], task_bytes: int, *, doc_split: str = "blank-line", text_field: str = "text",
               data_files: list[str] | None = None, hf_split: str = "train", stats: SourceStats | None = None,
               exclude: str | os.PathLike | None = None) -> Iterator[SourceTask]:
    """The tasks of every source in order, of about `task_bytes` each (the options are iter_documents'):
    byte ranges of plain-text and JSONL files, which the main process never reads; documents for the
    rest (Parquet, Hugging Face, python-docs), read here."""
    if doc_split not in DOC_SPLITS:
        raise ValueError(f"--doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    stats = stats if stats is not None else SourceStats()
    for spec in specs:
        if spec == DEFAULT_CORPUS_SPEC:
            yield from _document_tasks(iter_default_corpus(), task_bytes)
        elif spec.startswith("hf:"):
            name, _, config = spec[3:].partition(":")
            documents = iter_hf_dataset(name, config or None, text_field, data_files=data_files, split=hf_split)
            yield from _document_tasks(documents, task_bytes)
        else:
            for path in expand_paths(spec, exclude):
                stats.files += 1
                suffix = path.suffix.lower()
                if suffix == ".parquet":
                    yield from _document_tasks(iter_parquet_documents(path, text_field), task_bytes)
                else:
                    jsonl_field = text_field if suffix in JSONL_SUFFIXES else None
                    yield from _range_tasks(path, doc_split, jsonl_field, task_bytes)


def range_task_bytes(specs: Iterable[str], signature: list[list]) -> int | None:
    """The size of the source files (`signature` is source_signature's) when plan_tasks cuts every
    source into byte ranges (plain-text and JSONL files only); None otherwise."""
    if any(spec == DEFAULT_CORPUS_SPEC or spec.startswith("hf:") for spec in specs):
        return None
    if any(Path(path).suffix.lower() == ".parquet" for path, _, _ in signature):
        return None
    return sum(size for _, size, _ in signature)


def _range_tasks(path: Path, doc_split: str, text_field: str | None, task_bytes: int) -> Iterator[SourceTask]:
    """Byte-range tasks over a plain-text file (text_field None) or a JSONL file; a whole file is one
    task when each file is one document."""
    size = path.stat().st_size
    task_bytes = max(size, 1) if doc_split == "file" and text_field is None else task_bytes
    for start in range(0, size, task_bytes):
        end = min(start + task_bytes, size)
        yield SourceTask(path=str(path), start=start, end=end, doc_split=doc_split, text_field=text_field)


def _document_tasks(documents: Iterable[str], task_bytes: int) -> Iterator[SourceTask]:
    """Documents grouped into tasks of about `task_bytes` characters."""
    return (SourceTask(texts=texts) for texts in text_groups(documents, task_bytes))


def read_task(task: SourceTask) -> tuple[list[str], BlockReport | None]:
    """The task's documents, and for a byte range what the main process must number within the file
    (see TaskLines)."""
    if task.texts is not None:
        return task.texts, None
    read_block = read_paragraph_block if task.text_field is None else read_line_block
    block = read_block(Path(task.path), task.start, task.end)
    text, skipped = decode_text_block(block, task.start == 0)
    if task.text_field is None:
        return text_documents(text, task.doc_split), BlockReport(skipped, block.count(b"\n"))
    documents, bad_line = jsonl_block_documents(text, task.text_field, skipped)
    return documents, BlockReport(skipped, block.count(b"\n"), bad_line)


def decode_text_block(block: bytes, at_file_start: bool) -> tuple[str, list[tuple[int, str]]]:
    """Whole lines of a file as str, as iter_utf8_lines gives them ("\r\n" ends made "\n", a
    leading BOM dropped at the file's start), and (line index in the block, reason) for each line
    skipped because it is not UTF-8. The block is decoded at once unless it holds such a line."""
    skipped: list[tuple[int, str]] = []
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        lines = []
        for index, line in enumerate(_lines(block)):
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                skipped.append((index, error.reason))
        text = "".join(lines)
    if at_file_start and not (skipped and skipped[0][0] == 0):
        text = text.removeprefix("\ufeff")
    if "\r" in text:
        text = _CARRIAGE_RETURNS.sub("\n", text) if "\r\r" in text else text.replace("\r\n", "\n")
    return text, skipped


def _lines(block: bytes) -> list[bytes]:
    """The lines of `block`, each with its "\\n" (the last may have none); only "\\n" ends a line."""
    lines = [line + b"\n" for line in block.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def text_documents(text: str, doc_split: str) -> list[str]:
    """The documents of a plain text that starts a paragraph (a block from read_paragraph_block):
    its paragraphs, or the text itself for doc_split "file"; blank ones left out."""
    pieces = [text] if doc_split == "file" else _BLANK_LINE_OR_END.split(text)
    return [piece.strip("\n") for piece in pieces if piece.strip()]


class TaskLines:
    """Numbers within their files the lines that read_task reports by their index in a block (tasks
    reported in order): warnings for the lines skipped as not UTF-8, the error for a bad JSONL line."""

    def __init__(self, stats: SourceStats) -> None:
        self.stats = stats
        self.files: dict[str, tuple[SkippedLines, int]] = {}  # path -> (its reporter, line number of the next block)

    def report(self, task: SourceTask, block: BlockReport | None) -> None:
        if block is None:
            return
        reporter, first_line = self.files.get(task.path) or (SkippedLines(Path(task.path), self.stats), 1)
        for index, reason in block.skipped_lines:
            reporter.record(first_line + index, reason)
        if block.bad_line is not None:
            index, problem = block.bad_line
            raise ValueError(f"{task.path}:{first_line + index}: {problem}")
        self.files[task.path] = reporter, first_line + block.num_lines

    def close(self) -> None:
        for reporter, _ in self.files.values():
            reporter.close()


def read_paragraph_block(path: Path, start: int, end: int) -> bytes:
    """The file's bytes from the first paragraph start at or after byte `start` to the first at or
    after byte `end` (a paragraph starts the file or follows an empty line; the file's end counts as
    one). Consecutive ranges give consecutive blocks, so workers can each read their own part of a
    file and no paragraph spans two blocks (see text_documents); a block may be empty."""
    return _read_block(path, start, end, EMPTY_LINE_ENDS)


def read_line_block(path: Path, start: int, end: int) -> bytes:
    """read_paragraph_block for lines: from the first line start at or after `start` to the first
    at or after `end` (see jsonl_block_documents)."""
    return _read_block(path, start, end, (b"\n",))


def _read_block(path: Path, start: int, end: int, boundaries: tuple[bytes, ...]) -> bytes:
    with open_text_file(path) if start <= 0 else open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        first = _block_start(file, start, size, boundaries)
        last = _block_start(file, end, size, boundaries)
        file.seek(first)
        return file.read(max(last - first, 0))


def _block_start(file: BinaryIO, position: int, size: int, boundaries: tuple[bytes, ...]) -> int:
    """The first position >= `position` that is 0, `size`, or just after one of `boundaries`."""
    if position <= 0 or position >= size:
        return min(max(position, 0), size)
    longest = max(map(len, boundaries))
    window_start, window_bytes = max(position - longest, 0), BLOCK_SEARCH_BYTES
    while window_start < size:
        file.seek(window_start)
        data = file.read(window_bytes)
        ends = [
            window_start + index + len(boundary)
            for boundary in boundaries
            if (index := data.find(boundary, max(position - len(boundary) - window_start, 0))) >= 0
        ]
        if ends:
            return min(ends)
        if window_start + len(data) >= size:
            return size
        window_start += len(data) - (longest - 1)  # a boundary may straddle the windows
        window_bytes *= 2
    return size


def jsonl_block_documents(
    text: str, text_field: str, skipped: list[tuple[int, str]]
) -> tuple[list[str], tuple[int, str] | None]:
    """The documents of a decoded block of JSONL lines (decode_text_block gives `text` and the lines
    it `skipped`), and (line index in the block, problem) of its first bad line, or None."""
    documents: list[str] = []
    for index, line in enumerate(text.split("\n")):
        try:
            documents += record_documents(line, text_field)
        except ValueError as error:
            return documents, (_block_line_index(index, skipped), str(error))
    return documents, None


def _block_line_index(index: int, skipped: list[tuple[int, str]]) -> int:
    """The index in its block of line `index` of the decoded text, which lacks the skipped lines."""
    for skipped_index, _ in skipped:  # in block order
        if skipped_index > index:
            break
        index += 1
    return index
