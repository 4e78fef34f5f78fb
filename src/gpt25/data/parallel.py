"""Running a function over tasks in worker processes: ordered results, bounded memory.

`Pool.imap` would read its whole input ahead of the workers (a corpus larger than RAM would
be); `map_in_order` keeps at most TASKS_IN_FLIGHT_PER_WORKER tasks per worker queued and
yields results in input order. Workers are forked with the parent's tokenizer where the OS allows,
after the parent has run the first WARM_UP_TASKS itself: the workers then start with the pre-token
cache those filled (the commonest pre-tokens), instead of each merging them again.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

TASKS_IN_FLIGHT_PER_WORKER = 4
WARM_UP_TASKS = 1

Task = TypeVar("Task")
Result = TypeVar("Result")

_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _run_in_worker(function: Callable[[Any, Task], Result], task: Task) -> Result:
    return function(_worker_tokenizer, task)


def encode_documents(tokenizer: Any, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(per-document lengths, all tokens concatenated) with <|endoftext|> after every document."""
    tokens = tokenizer.encode_documents(texts, dtype)
    ends = np.flatnonzero(tokens == tokenizer.eot_id) + 1
    if len(ends) == len(texts):  # no document has an <|endoftext|> of its own: they end at the EOTs
        return np.diff(ends, prepend=0), tokens
    lengths = np.array([len(tokenizer.encode(text)) + 1 for text in texts], dtype=np.int64)
    return lengths, tokens


def map_in_order(
    function: Callable[[Any, Task], Result], tasks: Iterator[Task], workers: int, tokenizer: Any
) -> Iterator[tuple[Task, Result]]:
    """(task, function(tokenizer, task)) for each task, in input order; one worker runs in-process.

    `function` must be a module-level function (it is sent to the workers by name).
    """
    tasks = iter(tasks)
    if workers == 1:
        for task in tasks:
            yield task, function(tokenizer, task)
        return
    for task in itertools.islice(tasks, WARM_UP_TASKS):
        yield task, function(tokenizer, task)
    max_in_flight = TASKS_IN_FLIGHT_PER_WORKER * workers
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        in_flight: deque = deque()
        for task in tasks:
            in_flight.append((task, pool.apply_async(_run_in_worker, (function, task))))
            if len(in_flight) >= max_in_flight:
                done_task, result = in_flight.popleft()
                yield done_task, result.get()
        while in_flight:
            done_task, result = in_flight.popleft()
            yield done_task, result.get()
