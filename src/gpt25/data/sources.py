"""Where documents come from: local files, Hugging Face datasets, and the embedded Python-docs corpus.

A *source spec* is one string, as given to `gpt25 data prepare --source`:

- ``python-docs``: the embedded corpus (gpt25.data.default_corpus: docstrings of the standard
  library plus ``pydoc_data.topics``), available on every Python installation, no download;
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
gpt25.data.source_tasks cuts the sources into tasks that workers read.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gpt25.data.default_corpus import iter_default_corpus
from gpt25.data.hub import check_hf_source, iter_hf_dataset

DOC_SPLITS = ("blank-line", "file")
JSONL_SUFFIXES = (".jsonl", ".json")
DEFAULT_CORPUS_SPEC = "python-docs"
# Refused by name: workers read byte ranges of the raw file, which a compressed stream does not allow.
COMPRESSED_SUFFIXES = frozenset(
    {".gz", ".tgz", ".bz2", ".xz", ".lzma", ".zst", ".lz4", ".br", ".z", ".zip", ".7z", ".rar", ".tar"}
)
BINARY_CHECK_BYTES = 8000  # as git does: a NUL in a file's first 8000 bytes makes it binary
UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-32LE's starts with UTF-16LE's
MAX_WARNINGS_PER_FILE = 3
TEXT_BLOCK_BYTES = 1 << 20
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


def open_text_file(path: Path) -> BinaryIO:
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
    with open_text_file(path) as file:
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


def _line_blocks(path: Path, block_bytes: int) -> Iterator[bytes]:
    """The file's bytes in blocks of about block_bytes that end with a "\\n" (but for the last)."""
    pending: list[bytes] = []  # bytes after the last "\\n" so far
    with open_text_file(path) as file:
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
