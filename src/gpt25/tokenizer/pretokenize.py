"""Pre-tokenization shared by training and encoding: GPT-2's regex and special-token splitting.

Text is first cut at special tokens (longest first, so a special that contains another wins),
then each piece between specials is split into pre-tokens by GPT-2's regex. BPE merges never
cross a pre-token, so they never cross a special token or document boundary either.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_PATTERN)

# A non-space followed by a space: no pre-token spans this point (no pattern has a look-behind, and
# none continues from a non-space into a space), so text may be cut here without changing the split.
_LAST_SAFE_CUT = regex.compile(r"\S(?=\s)", flags=regex.REVERSE)


def special_token_regex(special_tokens: list[str]) -> regex.Pattern | None:
    """A regex matching any special token, trying longer ones first; None when there are none."""
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=len, reverse=True)
    return regex.compile("|".join(regex.escape(token) for token in ordered))


def split_on_specials(text: str, special_regex: regex.Pattern | None) -> list[str]:
    """Split `text` into alternating [piece, special, piece, special, ..., piece]."""
    if special_regex is None:
        return [text]
    parts: list[str] = []
    position = 0
    for match in special_regex.finditer(text):
        parts.append(text[position : match.start()])
        parts.append(match.group())
        position = match.end()
    parts.append(text[position:])
    return parts


def last_safe_cut(text: str, min_index: int = 0) -> int:
    """The largest index i >= max(min_index, 1) at which text[:i] and text[i:] pre-tokenize
    independently (a non-space followed by a space), or -1 when there is none."""
    match = _LAST_SAFE_CUT.search(text, max(min_index - 1, 0))
    return -1 if match is None else match.end()


def decode_utf8(data: bytes, path: str | Path, offset: int = 0) -> str:
    """Strict UTF-8 decode; the error names the file and the byte offset (data starts at `offset`)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}: invalid UTF-8 at byte offset {offset + error.start}; convert the file to UTF-8"
        ) from None


def iter_text_blocks(path: str | Path, block_bytes: int = 1 << 22) -> Iterator[str]:
    """Read a UTF-8 file as str blocks of about `block_bytes`, never splitting a character."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    consumed = 0
    with open_input(path) as handle:
        while True:
            block = handle.read(block_bytes)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}: invalid UTF-8 at byte offset {consumed - pending + error.start}; convert the file to UTF-8"
                ) from None
            consumed += len(block)
            if text:
                yield text
            if not block:
                return


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
