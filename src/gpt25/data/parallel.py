"""Tokenizing documents in worker processes: ordered results, bounded memory.

`Pool.imap` would read its whole input ahead of the workers (a corpus larger than RAM would
be); `encode_in_order` keeps at most TASKS_IN_FLIGHT_PER_WORKER batches per worker queued and
yields results in input order. Workers are forked with the parent's tokenizer where the OS allows.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

import numpy as np

TASKS_IN_FLIGHT_PER_WORKER = 4


class HasTexts(Protocol):
    texts: list[str]


Batch = TypeVar("Batch", bound=HasTexts)

_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def encode_documents(tokenizer: Any, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(per-document lengths, all tokens concatenated) with <|endoftext|> after every document."""
    eot_id = tokenizer.eot_id
    lengths = np.empty(len(texts), dtype=np.int64)
    flat: list[int] = []
    for index, text in enumerate(texts):
        ids = tokenizer.encode(text)
        flat.extend(ids)
        flat.append(eot_id)
        lengths[index] = len(ids) + 1
    return lengths, np.array(flat, dtype=dtype)


def _encode_in_worker(texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    return encode_documents(_worker_tokenizer, texts, dtype)


def encode_in_order(
    batches: Iterator[Batch], workers: int, tokenizer: Any, dtype: np.dtype
) -> Iterator[tuple[Batch, tuple[np.ndarray, np.ndarray]]]:
    """(batch, (lengths, tokens)) for each batch, in input order; one worker runs in-process."""
    if workers == 1:
        for batch in batches:
            yield batch, encode_documents(tokenizer, batch.texts, dtype)
        return
    max_in_flight = TASKS_IN_FLIGHT_PER_WORKER * workers
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        in_flight: deque = deque()
        for batch in batches:
            in_flight.append((batch, pool.apply_async(_encode_in_worker, (batch.texts, dtype))))
            if len(in_flight) >= max_in_flight:
                done_batch, result = in_flight.popleft()
                yield done_batch, result.get()
        while in_flight:
            done_batch, result = in_flight.popleft()
            yield done_batch, result.get()
