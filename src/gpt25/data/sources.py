"""Where documents come from: local files, Hugging Face datasets, and the embedded Python-docs corpus.

A *source spec* is one string, as given to `gpt25 data prepare --source`:

- ``python-docs``: the embedded corpus (docstrings of the standard library plus
  ``pydoc_data.topics``), available on every Python installation, no download;
- ``hf:NAME[:CONFIG]``: a Hugging Face dataset, streamed with the `datasets` library;
- anything else: a file, folder (all non-hidden files below it) or glob. ``.jsonl`` / ``.json``
  (one JSON object per line) and ``.parquet`` files yield their ``text_field``; other files are
  plain UTF-8 text, split into documents at blank lines or one document per file. Compressed
  files are refused (decompress them first), and so is a text file whose start shows it is binary
  or UTF-16/UTF-32 (a NUL byte or such a byte-order mark): check_source_file holds these checks.

A record's text (JSONL, Parquet, Hugging Face) is a document exactly as stored, edge newlines
included; only blank (empty or whitespace-only) records and nulls are skipped. Plain text is cut
at blank (whitespace-only) lines, and each paragraph (or whole file) loses its leading and
trailing newlines; blank ones are skipped.

Every function here yields plain ``str`` documents in a deterministic order. For parallel readers,
plan_tasks cuts the sources into SourceTasks (byte ranges of plain-text and JSONL files, groups
of documents for the rest) and read_task gives a task's documents in a worker.
"""

from __future__ import annotations

import ast
import glob
import inspect
import json
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gpt25.data.hub import check_hf_source, iter_hf_dataset
from gpt25.files import atomic_path
from gpt25.tokenizer.codec import text_groups

EOT_TEXT = "<|endoftext|>"
DOC_SPLITS = ("blank-line", "file")
JSONL_SUFFIXES = (".jsonl", ".json")
STRUCTURED_SUFFIXES = (*JSONL_SUFFIXES, ".parquet")  # files of records, not plain text
DEFAULT_CORPUS_SPEC = "python-docs"
# Refused by name: workers read byte ranges of the raw file, which a compressed stream does not allow.
COMPRESSED_SUFFIXES = frozenset(
    {".gz", ".tgz", ".bz2", ".xz", ".lzma", ".zst", ".lz4", ".br", ".z", ".zip", ".7z", ".rar", ".tar"}
)
BINARY_CHECK_BYTES = 8000  # as git does: a NUL in a file's first 8000 bytes makes it binary
UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-32LE's starts with UTF-16LE's
# Folders of the standard library that hold tests, demos of tests or installed third-party code.
SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
MAX_WARNINGS_PER_FILE = 3
TEXT_BLOCK_BYTES = 1 << 20
BLOCK_SEARCH_BYTES = 1 << 13  # read_paragraph_block / read_line_block search windows from this size up
EMPTY_LINE_ENDS = (b"\n\n", b"\n\r\n")  # an empty line ends just after these
_BLANK_LINE = re.compile(r"^[^\S\n]*\n", re.MULTILINE)
_BLANK_LINE_OR_END = re.compile(r"^[^\S\n]*(?:\n|\Z)", re.MULTILINE)  # a last line without "\n" can be blank too
_WHITESPACE_LINE = re.compile(r"\n[^\S\n]+(?:\n|\Z)")  # a blank line that is not empty (but for the first)
_CARRIAGE_RETURNS = re.compile(r"\r+\n")  # "\r\n" line ends (iter_utf8_lines drops every "\r" before the "\n")


class NonUtf8Warning(UserWarning):
    """A line of a text source was not valid UTF-8 and was skipped."""


@dataclass
class SourceStats:
    """Counters filled while documents are read (reported in the manifest and by the CLI)."""

    skipped_lines: int = 0
    files: int = 0


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
    """Yield the documents of every source spec in turn (see the module docstring for the specs);
    folders and globs leave out the files inside `exclude` (see expand_paths)."""
    if doc_split not in DOC_SPLITS:
        raise ValueError(f"--doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    stats = stats if stats is not None else SourceStats()
    for spec in specs:
        if spec == DEFAULT_CORPUS_SPEC:
            yield from iter_default_corpus()
        elif spec.startswith("hf:"):
            name, _, config = spec[3:].partition(":")
            yield from iter_hf_dataset(name, config or None, text_field, data_files=data_files, split=hf_split)
        else:
            for path in expand_paths(spec, exclude):
                stats.files += 1
                yield from iter_file_documents(path, doc_split=doc_split, text_field=text_field, stats=stats)


def check_sources(
    specs: Iterable[str], data_files: list[str] | None = None, exclude: str | os.PathLike | None = None
) -> None:
    """Fail before any work when a local spec matches nothing (or a compressed file) or a Hub dataset
    is unreachable."""
    for spec in specs:
        if spec.startswith("hf:"):
            check_hf_source(spec[3:].partition(":")[0], data_files)
        elif spec != DEFAULT_CORPUS_SPEC:
            expand_paths(spec, exclude)


def source_signature(specs: Iterable[str], exclude: str | os.PathLike | None = None) -> list[list]:
    """[path, size, mtime_ns] of every local file (and the Python version for python-docs), so a rerun
    can tell that the sources changed under it instead of resuming into a wrong dataset."""
    signature: list[list] = []
    for spec in specs:
        if spec == DEFAULT_CORPUS_SPEC:
            signature.append([spec, sys.version])
        elif not spec.startswith("hf:"):
            for path in expand_paths(spec, exclude):
                stat = path.stat()
                signature.append([str(path), stat.st_size, stat.st_mtime_ns])
    return signature


def expand_paths(spec: str, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The files a local spec names: itself, every non-hidden file below a folder, or a glob's matches;
    a folder or glob leaves out the files inside `exclude` (prepare's --out folder, which may lie
    inside a source folder). ValueError for a compressed file."""
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and not _is_hidden(p.relative_to(path))]
    else:
        files = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if exclude is not None and not path.is_file():
        excluded = Path(os.path.abspath(exclude))
        files = [p for p in files if not Path(os.path.abspath(p)).is_relative_to(excluded)]
    if not files:
        raise FileNotFoundError(
            f"source {spec!r} matched no files; give an existing file, folder or glob, "
            f"'{DEFAULT_CORPUS_SPEC}' or 'hf:NAME[:CONFIG]'"
        )
    for file in files:
        check_source_file(file)
    return sorted(files)


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def check_source_file(path: Path, head: bytes | None = None) -> None:
    """ValueError, one line naming the file, for a source file that cannot be read as it is: a
    compressed one (by its suffix) or, given its first bytes `head` (text sources), a file that is
    not UTF-8: a UTF-16 or UTF-32 byte-order mark, or a NUL byte (a binary file, or UTF-16/UTF-32
    text without a BOM)."""
    if path.suffix.lower() in COMPRESSED_SUFFIXES:
        raise ValueError(
            f"source file {path} is compressed ({path.suffix}); decompress it first "
            "(gunzip -k, unxz -k, zstd -d, unzip, ...) or leave it out of --source"
        )
    if head is None:
        return
    if head.startswith(UTF16_32_BOMS):
        raise ValueError(
            f"{path} is UTF-16 or UTF-32 text (it starts with a byte-order mark), not UTF-8; "
            "convert it to UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8 FILE > NEW_FILE"
        )
    if b"\0" in head:
        raise ValueError(
            f"{path} holds NUL bytes, so it is a binary file or UTF-16/UTF-32 text, not UTF-8; "
            "convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8) or leave it out of --source"
        )


def _open_text_file(path: Path) -> BinaryIO:
    """`path` opened for reading bytes, once check_source_file has passed it and its first bytes."""
    file = open(path, "rb")
    try:
        check_source_file(path, file.read(BINARY_CHECK_BYTES))
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return file


def iter_file_documents(path: Path, *, doc_split: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    """Documents of one local file, chosen by its extension (JSONL, Parquet or plain text)."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return iter_jsonl_documents(path, text_field, stats)
    if suffix == ".parquet":
        return iter_parquet_documents(path, text_field)
    return iter_text_documents(path, doc_split, stats)


class SkippedLines:
    """Counts the non-UTF-8 lines of one file; warns for the first few, and sums up at the end."""

    def __init__(self, path: Path, stats: SourceStats) -> None:
        self.path, self.stats = path, stats
        self.count = self.first = 0

    def decode(self, raw: bytes, line_number: int) -> str | None:
        """The line as str, or None (with a warning) when it is not UTF-8."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            self.record(line_number, error.reason)
            return None

    def record(self, line_number: int, reason: str) -> None:
        """Count a skipped line (warning for the first MAX_WARNINGS_PER_FILE)."""
        self.count += 1
        self.first = self.first or line_number
        if self.count <= MAX_WARNINGS_PER_FILE:
            warnings.warn(
                f"{self.path}:{line_number}: skipped a line that is not UTF-8 ({reason})", NonUtf8Warning, stacklevel=4
            )

    def close(self) -> None:
        self.stats.skipped_lines += self.count
        if self.count > MAX_WARNINGS_PER_FILE:
            warnings.warn(
                f"{self.path}: skipped {self.count} lines that are not UTF-8 in all (first at line {self.first})",
                NonUtf8Warning,
                stacklevel=3,
            )


def iter_utf8_lines(path: Path, stats: SourceStats) -> Iterator[tuple[int, str]]:
    """(line number, line) pairs with newlines normalised to "\\n"; non-UTF-8 lines are skipped with a warning."""
    bad_lines = SkippedLines(path, stats)
    with _open_text_file(path) as file:
        for line_number, raw in enumerate(file, start=1):
            line = bad_lines.decode(raw, line_number)
            if line is None:
                continue
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if line.endswith("\n"):
                line = line.rstrip("\r\n") + "\n"
            yield line_number, line
    bad_lines.close()


def iter_utf8_blocks(path: Path, stats: SourceStats) -> Iterator[str]:
    """The file as str blocks of whole lines: exactly the lines iter_utf8_lines gives, joined."""
    bad_lines = SkippedLines(path, stats)
    line_number = 1  # of the block's first line
    for block in _line_blocks(path, TEXT_BLOCK_BYTES):
        text, skipped = decode_text_block(block, at_file_start=line_number == 1)
        for index, reason in skipped:
            bad_lines.record(line_number + index, reason)
        line_number += block.count(b"\n")
        yield text
    bad_lines.close()


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
    with _open_text_file(path) if start <= 0 else open(path, "rb") as file:
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


def _line_blocks(path: Path, block_bytes: int) -> Iterator[bytes]:
    """The file's bytes in blocks of about block_bytes that end with a "\\n" (but for the last)."""
    pending: list[bytes] = []  # bytes after the last "\\n" so far
    with _open_text_file(path) as file:
        while data := file.read(block_bytes):
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                pending.append(data)
                continue
            yield b"".join([*pending, data[:cut]])
            pending = [data[cut:]]
    last = b"".join(pending)
    if last:
        yield last


def _lines(block: bytes) -> list[bytes]:
    """The lines of `block`, each with its "\\n" (the last may have none); only "\\n" ends a line."""
    lines = [line + b"\n" for line in block.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def iter_text_documents(path: Path, doc_split: str, stats: SourceStats) -> Iterator[str]:
    """Plain text: paragraphs separated by blank (whitespace-only) lines, or the whole file, as documents."""
    if doc_split == "file":
        yield from text_documents("".join(iter_utf8_blocks(path, stats)), doc_split)
        return
    pending = ""  # the start of a paragraph that may go on in the next block
    for text in iter_utf8_blocks(path, stats):
        pieces = _split_at_blank_lines(pending + text, _BLANK_LINE)
        pending = pieces.pop()
        for piece in pieces:
            yield from _non_empty(piece)
    yield from text_documents(pending, doc_split)


def text_documents(text: str, doc_split: str) -> list[str]:
    """The documents of a whole plain text (a file, or a block of one from read_paragraph_block):
    its paragraphs, or the text itself for doc_split "file"; blank ones left out."""
    if doc_split == "file":
        return list(_non_empty(text))
    pieces = [piece.strip("\n") for piece in _split_at_blank_lines(text, _BLANK_LINE_OR_END)]
    return [piece for piece in pieces if piece and not piece.isspace()]  # what _non_empty keeps


def _split_at_blank_lines(text: str, blank_line: re.Pattern) -> list[str]:
    """`text` (which starts a line) cut at its blank lines, by str.split when they are all empty."""
    if _WHITESPACE_LINE.search(text) is None and not (text[:1].isspace() and text[0] != "\n"):
        return text.split("\n\n")  # the pieces differ only in newlines at their ends, which _non_empty strips
    return blank_line.split(text)


def _non_empty(text: str) -> Iterator[str]:
    text = text.strip("\n")
    if text.strip():
        yield text


def iter_jsonl_documents(path: Path, text_field: str, stats: SourceStats) -> Iterator[str]:
    """One JSON object per line; yields its `text_field` (a missing field is an error, a null is skipped)."""
    for line_number, line in iter_utf8_lines(path, stats):
        try:
            yield from record_documents(line, text_field)
        except ValueError as error:
            raise ValueError(f"{path}:{line_number}: {error}") from None


def record_documents(line: str, text_field: str) -> list[str]:
    """The document of one JSONL line, its text exactly ([] for a blank line or a null or blank
    text); ValueError saying
    what is wrong with a line that is not an object with `text_field`, or whose field is no string."""
    if not line.strip():
        return []
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a JSON object per line ({error.msg}); JSONL sources need one object per line") from None
    if not isinstance(record, dict) or text_field not in record:
        fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"no field {text_field!r} (found: {fields}); pass --text_field NAME")
    text = record[text_field]
    if text is None:  # as Parquet's nulls
        return []
    if not isinstance(text, str):
        raise ValueError(
            f"field {text_field!r} is {type(text).__name__}, not a string; pass --text_field NAME of a text field"
        )
    return _record_text(text)


def _record_text(text: str) -> list[str]:
    """A record's text as its one document, exactly as stored; [] when it is blank."""
    return [text] if text.strip() else []


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


def iter_parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` column of a Parquet file (a string column; nulls skipped), a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable_parquet(path, error) from None
    _check_text_column(path, parquet.schema_arrow, text_field)
    try:
        for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield from _record_text(text)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable_parquet(path, error) from None


def _unreadable_parquet(path: Path, error: Exception) -> ValueError:
    reason = " ".join(str(error).split()) or type(error).__name__  # on one line
    return ValueError(
        f"{path} is not a readable Parquet file ({reason}); repair or re-export it, or leave it out of --source"
    )


def _check_text_column(path: Path, schema, text_field: str) -> None:
    """ValueError unless `schema` has a column `text_field` of strings."""
    import pyarrow as pa

    if text_field not in schema.names:
        raise ValueError(f"{path}: no column {text_field!r} (found: {', '.join(schema.names)}); pass --text_field NAME")
    column_type = schema.field(text_field).type
    value_type = column_type.value_type if pa.types.is_dictionary(column_type) else column_type
    text_types = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if not any(is_text(value_type) for is_text in text_types):
        raise ValueError(
            f"{path}: column {text_field!r} holds {column_type}, not strings; pass --text_field NAME of a text column"
        )


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


def plan_tasks(specs: Iterable[str], task_bytes: int, *, doc_split: str = "blank-line", text_field: str = "text",
               data_files: list[str] | None = None, hf_split: str = "train", stats: SourceStats | None = None,
               exclude: str | os.PathLike | None = None) -> Iterator[SourceTask]:
    """The tasks of every source in order, of about `task_bytes` each (the options are iter_documents'):
    byte ranges of plain-text and JSONL files, which the main process never reads; documents for the
    rest (Parquet, Hugging Face, python-docs), read here."""
    stats = stats if stats is not None else SourceStats()
    for spec in specs:
        if spec == DEFAULT_CORPUS_SPEC or spec.startswith("hf:"):
            documents = iter_documents([spec], doc_split=doc_split, text_field=text_field, data_files=data_files,
                                       hf_split=hf_split, stats=stats)
            yield from _document_tasks(documents, task_bytes)
            continue
        for path in expand_paths(spec, exclude):
            stats.files += 1
            suffix = path.suffix.lower()
            if suffix == ".parquet":
                yield from _document_tasks(iter_parquet_documents(path, text_field), task_bytes)
            else:
                yield from _range_tasks(path, doc_split, text_field if suffix in JSONL_SUFFIXES else None, task_bytes)


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


def iter_default_corpus() -> Iterator[str]:
    """The embedded corpus: one document per standard-library module (its docstrings) and per pydoc topic."""
    yield from iter_stdlib_docstrings()
    yield from iter_pydoc_topics()


def iter_stdlib_docstrings(stdlib: Path | None = None) -> Iterator[str]:
    """Docstrings of each stdlib module, extracted with `ast` (never imported), in sorted path order."""
    for path, module_name in iter_stdlib_modules(stdlib):
        document = module_document(path, module_name)
        if document:
            yield document


def iter_stdlib_modules(stdlib: Path | None = None) -> Iterator[tuple[Path, str]]:
    """(file, dotted module name) of each stdlib module the embedded corpus reads, in sorted path order."""
    stdlib = stdlib or Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if not _skip_stdlib_path(relative):
            yield path, _module_name(relative)


def _skip_stdlib_path(relative: Path) -> bool:
    folders = relative.parts[:-1]
    return (
        any(part in SKIPPED_STDLIB_DIRS or part.startswith(("config-", ".")) for part in folders)
        or relative.parts[0] == "pydoc_data"  # its topics come in as separate documents
    )


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_document(path: Path, module_name: str) -> str:
    """The docstrings of one module as a document, or "" when it has none or cannot be parsed."""
    sections = [f"{heading}\n\n{docstring}" for heading, docstring in module_docstrings(path, module_name)]
    return "\n\n".join(sections)


def module_docstrings(path: Path, module_name: str) -> list[tuple[str, str]]:
    """(heading, docstring) of the module and each class and function in it, e.g. ("json.dumps(obj, *, ...)",
    "Serialize ..."); empty when the file cannot be parsed."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError):
        return []
    return list(_docstrings(tree, module_name))


def _docstrings(node: ast.AST, qualified_name: str) -> Iterator[tuple[str, str]]:
    """(heading, cleaned docstring) for `node` and every class and function inside it, in source order."""
    docstring = ast.get_docstring(node, clean=False)
    if docstring and docstring.strip():
        yield _heading(node, qualified_name), inspect.cleandoc(docstring)
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(child, f"{qualified_name}.{child.name}")


def _heading(node: ast.AST, qualified_name: str) -> str:
    if isinstance(node, ast.ClassDef):
        return f"class {qualified_name}"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"{qualified_name}({ast.unparse(node.args)})"
    return f"module {qualified_name}"


def iter_pydoc_topics() -> Iterator[str]:
    """The help topics of `pydoc_data.topics` (the language reference behind `help("if")`), sorted by name."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if text:
            yield f"{name}\n\n{text}"


def corpus_size(documents: Iterable[str]) -> tuple[int, int]:
    """(number of documents, UTF-8 bytes) of a document stream."""
    num_documents = num_bytes = 0
    for document in documents:
        num_documents += 1
        num_bytes += len(document.encode("utf-8"))
    return num_documents, num_bytes


def write_corpus_file(documents: Iterable[str], path: str | os.PathLike) -> tuple[int, int]:
    """Write documents joined by "<|endoftext|>" (for `gpt25 tokenizer train`) atomically; returns
    (docs, bytes). On any error (or Ctrl-C) the temporary file goes and `path` is left as it was."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--out {path} is a folder; give the file to write, e.g. --out {path / 'corpus.txt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    num_documents = num_bytes = 0
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as file:
        for document in documents:
            if num_documents:
                file.write(EOT_TEXT)
            file.write(document)
            num_documents += 1
            num_bytes += len(document.encode("utf-8"))
    return num_documents, num_bytes
