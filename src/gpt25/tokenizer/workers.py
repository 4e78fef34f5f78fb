"""Process pools for the tokenizer's parallel work: training's pre-token counting and encoding files."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.pool import Pool


def worker_pool(num_workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Pool:
    """A process pool (fork where available) whose workers ignore Ctrl-C, then run `initializer`."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return context.Pool(num_workers, initializer=_start_worker, initargs=(initializer, initargs))


def _start_worker(initializer: Callable | None, initargs: tuple) -> None:
    # Ctrl-C reaches the whole process group, but only the parent should report it (leaving the pool
    # terminates the workers); a worker would print its own KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
