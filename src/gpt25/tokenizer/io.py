"""Reading and writing tokenizers: gpt25's versioned folder format (`save_folder`, `load_folder`), GPT-2's
vocab.json + merges.txt, tiktoken and Hugging Face's tokenizer.json.

Manual: docs/tokenizer.md ("Saved format")
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from gpt25.files import write_text_atomic
from gpt25.tokenizer.pretokenize import GPT2_PATTERN

FORMAT_NAME = "gpt25-bpe-tokenizer"
FORMAT_VERSION = 1
META_FILE = "gpt25_tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
MERGES_HEADER = "#version: 0.2"

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]


@lru_cache(maxsize=1)
def _translate_tables() -> tuple[dict[int, int], dict[int, int]]:
    """str.translate tables from chr(byte) to GPT-2's printable character for the byte (space -> 'Ġ', ...) and
    back: printable latin-1 bytes stay, the others become U+0100, U+0101, ... in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    encode = {byte: byte for byte in printable} | {byte: 256 + index for index, byte in enumerate(others)}
    # back, latin-1 characters outside the printable encoding become U+FFFF, which the final latin-1 encode rejects
    decode = dict.fromkeys(range(256), 0xFFFF) | {code: byte for byte, code in encode.items()}
    return encode, decode


def bytes_to_printable(token: bytes) -> str:
    return token.decode("latin-1").translate(_translate_tables()[0])


def printable_to_bytes(text: str, where: str) -> bytes:
    """Inverse of bytes_to_printable; `where` names the file for the error message."""
    return printables_to_bytes([text], where)[0]


def printables_to_bytes(texts: list[str], where: str) -> list[bytes]:
    """printable_to_bytes of each text, translated all at once (one char is one byte, so the
    lengths cut the result apart)."""
    ends = list(itertools.accumulate(map(len, texts)))
    try:
        data = "".join(texts).translate(_translate_tables()[1]).encode("latin-1")
    except UnicodeEncodeError as error:
        index = bisect.bisect_right(ends, error.start)
        text = texts[index]
        character = text[error.start - (ends[index - 1] if index else 0)]
        raise ValueError(
            f"{where}: token {text!r} has character {character!r}, which is outside GPT-2's byte encoding"
        ) from None
    return [data[start:end] for start, end in zip([0, *ends], ends, strict=False)]


def compute_fingerprint(vocab: Vocab, merges: Merges, special_tokens: list[str]) -> str:
    """sha256 hex of the vocab (in id order), merges (in rank order) and special tokens."""
    tokens = map(vocab.__getitem__, range(len(vocab)))
    specials = [special.encode("utf-8") for special in special_tokens]
    parts = itertools.chain(
        [f"{FORMAT_NAME}\n".encode()],
        (b"v%d:%b" % (len(token), token) for token in tokens),
        (b"m%d:%b%d:%b" % (len(left), left, len(right), right) for left, right in merges),
        (b"s%d:%b" % (len(special), special) for special in specials),
    )
    return hashlib.sha256(b"".join(parts)).hexdigest()  # one update: the same digest as one per part


def split_duplicates(vocab: Vocab) -> tuple[dict[str, int], list[list]]:
    """({printable token: id} for each token's first id, [[id, printable token], ...] for later ids
    with the same bytes: BPE can build one byte string by two different merges)."""
    entries: dict[str, int] = {}
    duplicates: list[list] = []
    for token_id in sorted(vocab):
        printable = bytes_to_printable(vocab[token_id])
        if printable in entries:
            duplicates.append([token_id, printable])
        else:
            entries[printable] = token_id
    return entries, duplicates


def save_folder(directory: str | Path, vocab: Vocab, merges: Merges, special_tokens: list[str]) -> None:
    """Write the three files of the saved format into `directory` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries, duplicates = split_duplicates(vocab)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "pattern": GPT2_PATTERN,
        "vocab_size": len(vocab),
        "num_merges": len(merges),
        "special_tokens": list(special_tokens),
        "duplicate_tokens": duplicates,
        "fingerprint": compute_fingerprint(vocab, merges, special_tokens),
    }
    write_text_atomic(directory / VOCAB_FILE, json.dumps(entries, ensure_ascii=False, indent=0))
    merge_lines = [f"{bytes_to_printable(a)} {bytes_to_printable(b)}\n" for a, b in merges]
    write_text_atomic(directory / MERGES_FILE, f"{MERGES_HEADER}\n" + "".join(merge_lines))
    meta["content_sha256"] = content_digest(directory, meta["special_tokens"], duplicates, meta["fingerprint"])
    write_text_atomic(directory / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {error.start})") from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _read_vocab_entries(path: str | Path) -> dict[str, int]:
    """A GPT-2-style vocab.json as it is written ({printable token: id}), checked."""
    path = Path(path)
    entries = _read_json(path)
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping tokens to ids")
    bad = next(((text, token_id) for text, token_id in entries.items() if type(token_id) is not int or token_id < 0), None)
    if bad is not None:
        raise ValueError(f"{path}: token {bad[0]!r} has id {bad[1]!r}, expected an integer >= 0")
    if len(set(entries.values())) != len(entries):
        repeated = next(token_id for token_id, count in collections.Counter(entries.values()).items() if count > 1)
        raise ValueError(f"{path}: id {repeated} is used by more than one token")
    return entries


def _vocab_from_entries(entries: dict[str, int], path: str | Path) -> Vocab:
    return dict(zip(entries.values(), printables_to_bytes(list(entries), str(path)), strict=True))


def _read_merge_tokens(path: str | Path) -> list[str]:
    """The printable tokens of a GPT-2-style merges.txt (optional '#version' header, then 'left right'
    per line), checked: left and right of each merge in rank order."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    first = 1 if lines and lines[0].startswith("#version") else 0
    rules = [line for line in lines[first:] if line]
    if not rules:
        return []
    tokens = " ".join(rules).split(" ")
    if "" in tokens or any(rule.count(" ") != 1 for rule in rules):
        for line_number, line in enumerate(lines[first:], start=first + 1):
            parts = line.split(" ")
            if line and (len(parts) != 2 or not parts[0] or not parts[1]):
                raise ValueError(f"{path}, line {line_number}: expected two tokens separated by one space, got {line!r}")
    return tokens


def read_vocab_and_merges(vocab_path: str | Path, merges_path: str | Path) -> tuple[Vocab, Merges, np.ndarray]:
    """A GPT-2-style vocab.json and merges.txt as (vocab, merges, merge ids): the merges are looked
    up as they are written, so each token's bytes are decoded once, for the vocab."""
    entries = _read_vocab_entries(vocab_path)
    vocab = _vocab_from_entries(entries, vocab_path)
    return vocab, *_read_merges(merges_path, entries, vocab)


def _read_merges(path: str | Path, entries: dict[str, int], vocab: Vocab) -> tuple[Merges, np.ndarray]:
    """(merges, merge ids) of a merges.txt whose tokens are those of `entries` (a vocab.json's)."""
    tokens = _read_merge_tokens(path)
    lefts, rights = tokens[0::2], tokens[1::2]

    def describe(rank: int) -> str:
        return f"{path}: merge {rank} {tuple(printables_to_bytes([lefts[rank], rights[rank]], str(path)))!r}"

    ids = merge_ids(lefts, rights, entries, describe)
    left_tokens, right_tokens = (map(vocab.__getitem__, column.tolist()) for column in (ids[:, 0], ids[:, 1]))
    return list(zip(left_tokens, right_tokens, strict=True)), ids


def merge_ids(lefts: Sequence, rights: Sequence, token_ids: Mapping, describe: Callable[[int], str]) -> np.ndarray:
    """(merges, 3) int64: the left, right and merged (left + right) id of each merge, in rank order,
    the tokens given as `token_ids` keys them (bytes, or printable str); ValueError for the first
    merge with a token missing from `token_ids`, which describe(rank) names."""
    id_lists = [list(map(token_ids.get, column)) for column in (lefts, rights, map(operator.add, lefts, rights))]
    if any(None in ids for ids in id_lists):
        rank = min(ids.index(None) for ids in id_lists if None in ids)
        raise ValueError(f"{describe(rank)} uses or makes a token missing from the vocab")
    return np.array(id_lists, dtype=np.int64).T


def load_folder(directory: str | Path) -> tuple[Vocab, Merges, np.ndarray, list[str], str]:
    """Read and validate a folder written by save_folder: (vocab, merges, merge ids, special tokens, fingerprint)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: tokenizer folder not found")
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path}: file not found, so {directory} is not a gpt25 tokenizer folder (for GPT-2-style "
            "files, convert them: gpt25 tokenizer import --vocab VOCAB.json --merges MERGES.txt --out NEW_DIR)"
        )
    meta = _read_meta(meta_path)
    special_tokens = meta["special_tokens"]
    duplicates = meta.get("duplicate_tokens", [])
    entries = _read_vocab_entries(directory / VOCAB_FILE)
    vocab = _vocab_from_entries(entries, directory / VOCAB_FILE)
    vocab.update(_read_duplicates(duplicates, meta_path))
    if len(vocab) != meta.get("vocab_size"):
        raise ValueError(
            f"{directory / VOCAB_FILE}: has {len(vocab)} tokens but {META_FILE} says vocab_size {meta.get('vocab_size')!r}"
        )
    if min(vocab) != 0 or max(vocab) != len(vocab) - 1:
        raise ValueError(f"{directory / VOCAB_FILE}: ids must be 0..{len(vocab) - 1} with no gaps")
    merges, merge_ids = _read_merges(directory / MERGES_FILE, entries, vocab)
    fingerprint = meta.get("fingerprint")
    # files as saved: the recorded fingerprint is right, no need to recompute it; a format or whitespace edit
    # changes the digest but not the fingerprint, which is then checked
    if meta.get("content_sha256") != content_digest(directory, special_tokens, duplicates, fingerprint):
        if compute_fingerprint(vocab, merges, special_tokens) != fingerprint:
            raise ValueError(
                f"{meta_path}: fingerprint does not match {VOCAB_FILE} + {MERGES_FILE} (files corrupt or edited)"
            )
    return vocab, merges, merge_ids, special_tokens, fingerprint


def content_digest(directory: Path, special_tokens: list[str], duplicates: list, fingerprint: object) -> str:
    """sha256 of the saved files' bytes and of what the meta file says of them (the meta file's content_sha256)."""
    digest = hashlib.sha256()
    for name in (VOCAB_FILE, MERGES_FILE):
        data = (directory / name).read_bytes()
        digest.update(b"%d:%b" % (len(data), data))
    digest.update(json.dumps([special_tokens, duplicates, fingerprint], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _read_meta(meta_path: Path) -> dict:
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{meta_path}: not a gpt25 tokenizer (format is {found!r}, expected {FORMAT_NAME!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: unsupported format version {meta.get('version')!r} (this gpt25 reads version {FORMAT_VERSION})"
        )
    special_tokens = meta.get("special_tokens")
    if not isinstance(special_tokens, list) or not all(isinstance(token, str) for token in special_tokens):
        raise ValueError(f"{meta_path}: 'special_tokens' must be a list of strings")
    if meta.get("pattern") != GPT2_PATTERN:
        raise ValueError(f"{meta_path}: unknown pre-tokenizer pattern (only GPT-2's regex is supported)")
    return meta


def _read_duplicates(duplicates: object, meta_path: Path) -> Vocab:
    valid = isinstance(duplicates, list) and all(
        isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and isinstance(entry[1], str)
        for entry in duplicates
    )
    if not valid:
        raise ValueError(f"{meta_path}: 'duplicate_tokens' must be a list of [id, token] pairs")
    return {token_id: printable_to_bytes(text, str(meta_path)) for token_id, text in duplicates}


def tiktoken_encoding(vocab: Vocab, special_ids: dict[str, int], name: str):
    """A tiktoken.Encoding with the same ids: ranks are ids, so merge order follows id order."""
    import tiktoken

    special_values = {token.encode("utf-8") for token in special_ids}
    mergeable_ranks: dict[bytes, int] = {}
    for token_id in sorted(vocab):
        if vocab[token_id] not in special_values:
            mergeable_ranks.setdefault(vocab[token_id], token_id)
    return tiktoken.Encoding(
        name=name, pat_str=GPT2_PATTERN, mergeable_ranks=mergeable_ranks, special_tokens=dict(special_ids)
    )


def huggingface_json(vocab: Vocab, merges: Merges, special_ids: dict[str, int]) -> dict:
    """The content of a Hugging Face `tokenizer.json` for a byte-level BPE with GPT-2's regex."""
    added_tokens = [
        {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for token, token_id in sorted(special_ids.items(), key=lambda item: item[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": split_duplicates(vocab)[0],
            "merges": [[bytes_to_printable(a), bytes_to_printable(b)] for a, b in merges],
        },
    }
