"""Pre-tokenization shared by training and encoding: special-token splitting, GPT-2's regex, and where text
(or a file's bytes) may be cut without changing the pre-tokens.

Manual: docs/tokenizer.md ("Rules")
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_PATTERN)


# A non-space followed by a space: no pre-token spans this point (no pattern has a look-behind, and
# none continues from a non-space into a space), so text may be cut here without changing the split.
_LAST_SAFE_CUT = regex.compile(r"\S(?=\s)", flags=regex.REVERSE)
_NEXT_SAFE_CUT = regex.compile(r"\S(?=\s)")
# The same in a file's raw bytes, between ASCII characters (so never inside a UTF-8 sequence): a cut
# right after a match; the second only cuts before a newline.
SAFE_BYTE_CUT = re.compile(rb"[\x21-\x7e](?=[\t\n\x0b\x0c\r ])")
SAFE_BYTE_CUT_AT_NEWLINE = re.compile(rb"[\x21-\x7e](?=\n)")
BOUNDARY_SEARCH_BYTES = 1 << 16

Chunk = tuple[str, int, int]  # (path, start byte, end byte)


def special_token_regex(special_tokens: list[str]) -> regex.Pattern | None:
    """A regex matching any special token, trying longer ones first; None when there are none. Its one
    group captures the token, so its split() keeps them (see split_on_specials)."""
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("(" + "|".join(regex.escape(token) for token in ordered) + ")")


def split_on_specials(text: str, special_regex: regex.Pattern | None) -> list[str]:
    """Split `text` into alternating [piece, special, piece, special, ..., piece]."""
    return [text] if special_regex is None else special_regex.split(text)


def last_safe_cut(text: str, min_index: int = 0) -> int:
    """The largest index i >= max(min_index, 1) at which text[:i] and text[i:] pre-tokenize
    independently (a non-space followed by a space), or -1 when there is none."""
    match = _LAST_SAFE_CUT.search(text, max(min_index - 1, 0))
    return -1 if match is None else match.end()


def split_at_safe_cuts(text: str, chunk_chars: int) -> Iterator[str]:
    """Cut `text` (no special tokens in it) into pieces of about chunk_chars that pre-tokenize
    independently: each cut is the first safe cut (see last_safe_cut) after chunk_chars."""
    start = 0
    while len(text) - start > chunk_chars:
        cut = _NEXT_SAFE_CUT.search(text, start + chunk_chars - 1)
        if cut is None:
            break
        yield text[start : cut.end()]
        start = cut.end()
    yield text[start:]


def open_input(path: str | Path) -> BinaryIO:
    """Open an input file for binary reading with one-line errors for missing or unreadable files."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; pass text files")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: input file not found") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror})") from None


def plan_chunks(
    path: Path, chunk_bytes: int, specials_bytes: list[bytes], cut: re.Pattern = SAFE_BYTE_CUT_AT_NEWLINE
) -> list[Chunk]:
    """Byte ranges covering `path`, each ending where text can be cut without changing pre-tokens."""
    boundaries = [0]
    with open_input(path) as handle:
        size = path.stat().st_size
        while boundaries[-1] + chunk_bytes < size:
            boundary = _next_boundary(handle, boundaries[-1], boundaries[-1] + chunk_bytes, specials_bytes, cut)
            if boundary is None:
                break
            boundaries.append(boundary)
    boundaries.append(size)
    return [(str(path), start, end) for start, end in itertools.pairwise(boundaries) if end > start]


def _next_boundary(handle: BinaryIO, previous: int, target: int, specials_bytes: list[bytes],
                   cut: re.Pattern) -> int | None:
    """The first cut point after `previous` in the first window that has one: where a special token
    starts (one straddling `target` too), or else after a match of `cut` at or after `target`. None at
    the end of the file."""
    overlap = max([len(token) - 1 for token in specials_bytes] + [1])  # a special token may straddle a window's end
    start = max(previous + 1, target - overlap)  # from before `target`: a special token straddling it is found whole
    while True:
        handle.seek(start)
        window = handle.read(BOUNDARY_SEARCH_BYTES)
        found = [index for index in (window.find(token) for token in specials_bytes) if index >= 0]
        if found:
            return start + min(found)
        match = cut.search(window, max(0, target - start))
        if match is not None:
            return start + match.end()
        if len(window) < BOUNDARY_SEARCH_BYTES:
            return None
        start += len(window) - overlap


def read_chunk(chunk: Chunk) -> str:
    path, start, end = chunk
    with open_input(path) as handle:
        handle.seek(start)
        data = handle.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: invalid UTF-8 at byte offset {start + error.start}; convert the file to UTF-8") from None
