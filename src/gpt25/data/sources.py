"""Where documents come from: source specs checked (check_sources) and cut into the tasks prepare's workers read
(plan_tasks, read_task), every document in order through the same tasks (iter_documents), the Hugging Face Hub
refused at once offline, `gpt25 data download` (download_repo). Manual: docs/data.md (Sources).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from gpt25.data.default_corpus import iter_default_corpus
from gpt25.tokenizer.codec import text_groups

DOC_SPLITS = ("blank-line", "file")
JSONL_SUFFIXES = (".jsonl", ".json")
DEFAULT_CORPUS_SPEC = "python-docs"
# Refused by name: workers read byte ranges of the raw file, which a compressed stream does not allow.
COMPRESSED_SUFFIXES = frozenset(
    {".gz", ".tgz", ".bz2", ".xz", ".lzma", ".zst", ".lz4", ".br", ".z", ".zip", ".7z", ".rar", ".tar"}
)
TRUE_VALUES = ("1", "ON", "YES", "TRUE")
LOCAL_ALTERNATIVE = (
    "offline, use local files instead: --source 'DIR/*.jsonl' --text_field text "
    "(or --source python-docs, the embedded corpus)"
)
DOWNLOAD_ALTERNATIVE = (
    "offline, copy the files by hand and pass local paths, e.g. gpt25 data prepare --source DIR "
    "(or --source python-docs, the embedded corpus)"
)
BINARY_CHECK_BYTES = 8000  # as git does: a NUL in a file's first 8000 bytes makes it binary
UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-32LE's starts with UTF-16LE's
MAX_WARNINGS_PER_FILE = 3
TEXT_BLOCK_BYTES = 1 << 20  # the byte ranges iter_documents reads a file in
BLOCK_SEARCH_BYTES = 1 << 13  # read_block searches windows from this size up
PARAGRAPH_STARTS_AFTER = (b"\n\n", b"\n\r\n")  # an empty line: plain text's blocks start just after one
LINE_STARTS_AFTER = (b"\n",)  # JSONL's blocks start at a line
_BLANK_LINE_OR_END = re.compile(r"^[^\S\n]*(?:\n|\Z)", re.MULTILINE)  # a last line without "\n" can be blank too
_LINES = re.compile(rb"[^\n]*\n|[^\n]+\Z")  # each with its "\n" (the last may have none); only "\n" ends one
_CARRIAGE_RETURNS = re.compile(r"\r+\n")  # "\r\n" line ends: every "\r" before a "\n" goes


class NonUtf8Warning(UserWarning):
    """A line of a text source was not valid UTF-8 and was skipped."""


@dataclass
class SourceStats:
    skipped_lines: int = 0
    files: int = 0


@dataclass
class SourceTask:
    """Consecutive documents for one worker: ones already read (`texts`), or a byte range of a text or JSONL file."""

    texts: list[str] | None = None
    path: str = ""  # the file, when the task is a byte range
    start: int = 0
    end: int = 0
    doc_split: str = "blank-line"  # how a plain-text range splits into documents
    parse_line: Callable[[str], list] | None = None  # what a JSONL line holds (record_documents); None: plain text


@dataclass
class BlockReport:
    """What read_task found in a byte range's block, by line index in the block."""

    skipped_lines: list[tuple[int, str]]  # (line index, reason) of each line skipped as not UTF-8
    num_lines: int
    bad_line: tuple[int, str] | None = None  # (line index, problem): a JSONL line that is no record


def check_sources(specs: Iterable[str], data_files: list[str] | None = None,
                  exclude: str | os.PathLike | None = None) -> list[list]:
    """Fail before any work on a local spec that matches nothing or a compressed file, or an unreachable Hub;
    returns [path, size, mtime_ns] of each local file (python-docs: the Python version) to stop a resume on changes."""
    signature: list[list] = []
    for spec in specs:
        if spec.startswith("hf:"):
            check_hf_source(spec[3:].partition(":")[0], data_files)
        elif spec == DEFAULT_CORPUS_SPEC:
            signature.append([spec, sys.version])
        else:
            for path in expand_paths(spec, exclude):
                stat = path.stat()
                signature.append([str(path), stat.st_size, stat.st_mtime_ns])
    return signature


def expand_paths(spec: str, exclude: str | os.PathLike | None = None) -> list[Path]:
    """The files a spec names: itself, the non-hidden files below a folder or a glob's matches, less `exclude`'s."""
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    else:
        files = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
    if exclude is not None and not path.is_file():  # prepare's --out may lie inside a source folder
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


def check_source_file(path: Path, head: bytes | None = None) -> None:
    """ValueError naming a file that cannot be read as it is: compressed, or (given its first bytes) not UTF-8."""
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


def record_documents(line: str, text_field: str) -> list[str]:
    """The document of one JSONL line, its text exactly ([] for a blank line or text); ValueError for a bad line."""
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
    return [text] if text.strip() else []


def iter_parquet_column(path: Path, column: str, fix: str, strings: bool = False) -> Iterator[Any]:
    """`column`'s values; ValueError for a bad file or column (with `strings`: not text), ending in `fix`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        _check_column(path, parquet.schema_arrow, column, fix, strings)
        for batch in parquet.iter_batches(columns=[column], batch_size=1024):
            yield from batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__  # on one line
        raise ValueError(f"{path} is not a readable Parquet file ({reason}); repair or re-export it, "
                         "or leave it out") from None


def _check_column(path: Path, schema, column: str, fix: str, strings: bool) -> None:
    import pyarrow as pa

    if column not in schema.names:
        raise ValueError(f"{path}: no column {column!r} (found: {', '.join(schema.names)}); {fix}")
    column_type = schema.field(column).type
    value_type = column_type.value_type if pa.types.is_dictionary(column_type) else column_type
    text_types = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if strings and not any(is_text(value_type) for is_text in text_types):
        raise ValueError(f"{path}: column {column!r} holds {column_type}, not strings; {fix} of a text column")


def _texts(values: Iterable[Any]) -> Iterator[str]:
    """Each text exactly as stored (edge newlines are the user's data); nulls and blank ones skipped."""
    return (str(value) for value in values if value is not None and str(value).strip())


# ---- documents read in tasks: byte ranges of text and JSONL files, groups of documents for the rest ----


def iter_documents(specs: Iterable[str], *, stats: SourceStats | None = None, **options: Any) -> Iterator[str]:
    """Every document in order, read as prepare's workers read it, so both see the same (`options`: plan_tasks')."""
    stats = stats if stats is not None else SourceStats()
    return _read_tasks(plan_tasks(specs, TEXT_BLOCK_BYTES, stats=stats, **options), stats)


def iter_jsonl_records(path: Path, parse_line: Callable[[str], list]) -> Iterator[Any]:
    """What `parse_line` makes of each line of a JSONL file, read as a JSONL source is (errors name file:line)."""
    return _read_tasks(_range_tasks(path, "blank-line", parse_line, TEXT_BLOCK_BYTES), SourceStats())


def _read_tasks(tasks: Iterable[SourceTask], stats: SourceStats) -> Iterator[Any]:
    task_lines = TaskLines(stats)
    for task in tasks:
        documents, block = read_task(task)
        yield from documents  # before a bad JSONL line's error, the documents ahead of it
        task_lines.report(task, block)
    task_lines.close()


def plan_tasks(specs: Iterable[str], task_bytes: int, *, doc_split: str = "blank-line", text_field: str = "text",
               data_files: list[str] | None = None, hf_split: str = "train", stats: SourceStats,
               exclude: str | os.PathLike | None = None) -> Iterator[SourceTask]:
    """The tasks of every source in order, about `task_bytes` each: byte ranges of text and JSONL files, read by
    the workers; documents for the rest, read here."""
    if doc_split not in DOC_SPLITS:
        raise ValueError(f"--doc_split must be one of {', '.join(DOC_SPLITS)}, got {doc_split!r}")
    for spec in specs:
        if spec == DEFAULT_CORPUS_SPEC:
            yield from _document_tasks(iter_default_corpus(), task_bytes)
        elif spec.startswith("hf:"):
            name, _, config = spec[3:].partition(":")
            rows = iter_hf_field(name, config or None, text_field, "pass --text_field NAME", data_files=data_files,
                                 split=hf_split)
            yield from _document_tasks(_texts(rows), task_bytes)
        else:
            for path in expand_paths(spec, exclude):
                stats.files += 1
                suffix = path.suffix.lower()
                if suffix == ".parquet":
                    column = iter_parquet_column(path, text_field, "pass --text_field NAME", strings=True)
                    yield from _document_tasks(_texts(column), task_bytes)
                else:
                    parse_line = partial(record_documents, text_field=text_field) if suffix in JSONL_SUFFIXES else None
                    yield from _range_tasks(path, doc_split, parse_line, task_bytes)


def range_task_bytes(specs: Iterable[str], signature: list[list]) -> int | None:
    """The files' total size when plan_tasks cuts every source into byte ranges (text and JSONL), else None."""
    if any(spec == DEFAULT_CORPUS_SPEC or spec.startswith("hf:") for spec in specs):
        return None
    if any(Path(path).suffix.lower() == ".parquet" for path, _, _ in signature):
        return None
    return sum(size for _, size, _ in signature)


def _range_tasks(path: Path, doc_split: str, parse_line: Callable[[str], list] | None,
                 task_bytes: int) -> Iterator[SourceTask]:
    size = path.stat().st_size
    if doc_split == "file" and parse_line is None:  # a plain-text file that is one document is one task
        task_bytes = max(size, 1)
    for start in range(0, size, task_bytes):
        end = min(start + task_bytes, size)
        yield SourceTask(path=str(path), start=start, end=end, doc_split=doc_split, parse_line=parse_line)


def _document_tasks(documents: Iterable[str], task_bytes: int) -> Iterator[SourceTask]:
    return (SourceTask(texts=texts) for texts in text_groups(documents, task_bytes))


def read_task(task: SourceTask) -> tuple[list[str], BlockReport | None]:
    """The task's documents, and for a byte range what TaskLines must number within the file."""
    if task.texts is not None:
        return task.texts, None
    starts_after = PARAGRAPH_STARTS_AFTER if task.parse_line is None else LINE_STARTS_AFTER
    block = read_block(Path(task.path), task.start, task.end, starts_after)
    text, skipped = decode_text_block(block, task.start == 0)
    documents, bad_line = ((text_documents(text, task.doc_split), None) if task.parse_line is None
                           else jsonl_block_documents(text, task.parse_line, skipped))
    return documents, BlockReport(skipped, block.count(b"\n"), bad_line)


def decode_text_block(block: bytes, at_file_start: bool) -> tuple[str, list[tuple[int, str]]]:
    """Whole lines as str ("\r\n" made "\n", a BOM at the file's start dropped), and (line index in the
    block, reason) of each line skipped as not UTF-8."""
    skipped: list[tuple[int, str]] = []
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        lines = []
        for index, line in enumerate(_LINES.findall(block)):
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


def text_documents(text: str, doc_split: str) -> list[str]:
    """The documents of a text that starts a paragraph: its paragraphs (doc_split "file": itself), less blank ones."""
    pieces = [text] if doc_split == "file" else _BLANK_LINE_OR_END.split(text)
    return [piece.strip("\n") for piece in pieces if piece.strip()]


class TaskLines:
    """Numbers read_task's block lines within their files (tasks in order) in non-UTF-8 warnings and JSONL errors."""

    def __init__(self, stats: SourceStats) -> None:
        self.stats = stats
        self.next_line: dict[str, int] = {}  # path -> line number of its next block
        self.skipped: dict[str, tuple[int, int]] = {}  # path -> (lines skipped as not UTF-8, the first one)

    def report(self, task: SourceTask, block: BlockReport | None) -> None:
        if block is None:
            return
        first_line = self.next_line.get(task.path, 1)
        for index, reason in block.skipped_lines:
            count, first = self.skipped.get(task.path, (0, first_line + index))
            self.skipped[task.path] = count + 1, first
            if count < MAX_WARNINGS_PER_FILE:
                warnings.warn(f"{task.path}:{first_line + index}: skipped a line that is not UTF-8 ({reason})",
                              NonUtf8Warning, stacklevel=3)
        if block.bad_line is not None:
            index, problem = block.bad_line
            raise ValueError(f"{task.path}:{first_line + index}: {problem}")
        self.next_line[task.path] = first_line + block.num_lines

    def close(self) -> None:
        for path, (count, first) in self.skipped.items():
            self.stats.skipped_lines += count
            if count > MAX_WARNINGS_PER_FILE:
                warnings.warn(f"{path}: skipped {count} lines that are not UTF-8 in all (first at line {first})",
                              NonUtf8Warning, stacklevel=3)


def read_block(path: Path, start: int, end: int, starts_after: tuple[bytes, ...]) -> bytes:
    """The bytes from the first block start (the file's start or end, or just after one of `starts_after`) at or
    after `start` to the first at or after `end`: consecutive ranges give consecutive blocks, none splitting a
    paragraph (or line), so workers can cut a file blindly. A block may be empty."""
    with open(path, "rb") as file:
        if start <= 0:  # the file's first block: its start tells a binary or UTF-16/UTF-32 file
            check_source_file(path, file.read(BINARY_CHECK_BYTES))
        size = os.fstat(file.fileno()).st_size
        first = _block_start(file, start, size, starts_after)
        last = _block_start(file, end, size, starts_after)
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


def jsonl_block_documents(text: str, parse_line: Callable[[str], list],
                          skipped: list[tuple[int, str]]) -> tuple[list, tuple[int, str] | None]:
    """What `parse_line` makes of a decoded block's lines, and (index in the block, problem) of the first bad one."""
    documents: list = []
    for index, line in enumerate(text.split("\n")):
        try:
            documents += parse_line(line)
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


# ---- the Hugging Face Hub ----


def hub_offline() -> bool:
    """True when the user switched the Hub off (HF_HUB_OFFLINE, or HF_DATASETS_OFFLINE for `datasets`)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in TRUE_VALUES


def check_hub_reachable(repo_id: str, repo_type: str, what: str, alternative: str = LOCAL_ALTERNATIVE) -> None:
    """Fail at once offline: ValueError for a missing repo (a typo), ConnectionError when the Hub is unreachable."""
    if hub_offline():
        raise ConnectionError(f"{what} needs the internet and offline mode is on (HF_HUB_OFFLINE); {alternative}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:  # one info request fails within a second; `datasets` would retry for about half a minute
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=10)
    except GatedRepoError:
        return  # it exists; `datasets` reports the missing token itself
    except RepositoryNotFoundError:
        raise ValueError(f"no {repo_type} named {repo_id!r} on the Hugging Face Hub; check the name") from None
    except Exception as error:  # the HTTP client's own connect/timeout errors have no common base
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConnectionError(
            f"{what} needs the internet, and the Hugging Face Hub is unreachable ({reason}); {alternative}"
        ) from None


def check_hf_source(name: str, data_files: list[str] | None, alternative: str = LOCAL_ALTERNATIVE) -> None:
    """Fail at once when a Hub dataset cannot be reached; local builders (data_files, a folder) need no check."""
    if not data_files and not Path(name).exists():
        check_hub_reachable(name, "dataset", f"hf:{name}", alternative)


def iter_hf_field(name: str, config: str | None, field: str, fix: str, *, data_files: list[str] | None = None,
                  split: str = "train", alternative: str = LOCAL_ALTERNATIVE) -> Iterator[Any]:
    """Stream `field` of each row of a Hub dataset; one-line errors when it is unreachable or a row lacks it."""
    check_hf_source(name, data_files, alternative)
    import datasets

    rows = datasets.load_dataset(name, config, data_files=data_files, split=split, streaming=True)
    for row_number, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"hf:{name} row {row_number}: no field {field!r} (found: {', '.join(row)}); {fix}")
        yield row[field]


def download_repo(repo_id: str, repo_type: str, out: str | os.PathLike | None = None,
                  include: list[str] | None = None) -> Path:
    """Download a Hub repo into `out` (else the HF cache; HF_HUB_OFFLINE=1: a cached copy) and return its folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    what = f"downloading {repo_type} {repo_id}"
    try:
        if hub_offline():
            cached = Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=include))
            if out is None:
                return cached
            shutil.copytree(cached, out, dirs_exist_ok=True)
            return Path(out)
        check_hub_reachable(repo_id, repo_type, what, DOWNLOAD_ALTERNATIVE)
        return Path(snapshot_download(repo_id, repo_type=repo_type, local_dir=out, allow_patterns=include))
    except LocalEntryNotFoundError:
        raise ConnectionError(
            f"{what} needs the internet and offline mode is on (HF_HUB_OFFLINE) with no cached copy; {DOWNLOAD_ALTERNATIVE}"
        ) from None
