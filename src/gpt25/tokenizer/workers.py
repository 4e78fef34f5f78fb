"""map_in_order: a function run over tasks in worker processes, dealt round-robin, results yielded in input
order with memory bounded however long the input: tokenizer training's counting, encoding files, and the data
pipeline's tokenization. Manual: docs/data.md (How the work is split).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

TASKS_IN_FLIGHT_PER_WORKER = 4  # queued per worker: it never waits for work, and memory stays bounded
WARM_UP_TASKS = 1

Task = TypeVar("Task")
Result = TypeVar("Result")


def map_in_order(
    function: Callable[[Any, Task], Result], tasks: Iterator[Task], workers: int, shared: Any,
    warm_up: int = WARM_UP_TASKS,
) -> Iterator[tuple[Task, Result]]:
    """(task, function(shared, task)) for each task, in input order; one worker runs in-process. Every worker holds
    `shared` (the tokenizer, say); `function` must be module-level (sent by name); a worker's exception is raised
    here, its traceback as the cause. The first `warm_up` tasks run in this process before the workers start."""
    tasks = iter(tasks)
    # the parent runs the first tasks (all of them with one worker): workers forked after it start with the
    # pre-token cache they filled (the commonest pre-tokens) instead of each merging them again
    for task in itertools.islice(tasks, None if workers == 1 else warm_up):
        yield task, function(shared, task)
    if workers == 1:
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    # Our own processes, each with its own pipes, not multiprocessing.Pool: its worker-handler thread wakes whenever
    # result bytes wait in its pipe, spending the main process's CPU while results are large; and its terminate()
    # after a worker's error could hang for good, when it killed a worker that held the shared result pipe's lock
    # (seen in a loop of tokenizer trainings on a file with a bad byte).
    pool = [_Worker(context, function, shared) for _ in range(workers)]
    finished = False
    try:
        in_flight: deque[tuple[Task, _Worker]] = deque()
        for index, task in enumerate(tasks):
            worker = pool[index % workers]
            worker.task_writer.send(task)
            in_flight.append((task, worker))
            if len(in_flight) >= TASKS_IN_FLIGHT_PER_WORKER * workers:
                done_task, done_worker = in_flight.popleft()
                yield done_task, done_worker.receive()
        while in_flight:
            done_task, done_worker = in_flight.popleft()
            yield done_task, done_worker.receive()
        finished = True
    finally:
        for worker in pool:
            worker.stop(finished)


@dataclass
class _Failure:
    error: BaseException
    traceback: str


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process."""

    def __str__(self) -> str:
        return f"\n\n{self.args[0]}"


class _Worker:
    """One worker process, fed through its own task pipe, answering in order on its result pipe."""

    def __init__(self, context: Any, function: Callable, shared: Any) -> None:
        task_reader, self.task_writer = context.Pipe(duplex=False)
        self.result_reader, result_writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(task_reader, result_writer, function, shared), daemon=True)
        self.process.start()
        task_reader.close()
        result_writer.close()

    def receive(self) -> Any:
        try:
            result = self.result_reader.recv()
        except EOFError:
            self.process.join(timeout=5)
            raise RuntimeError(f"worker process {self.process.pid} died (exit code {self.process.exitcode}); "
                               "if it ran out of memory, use fewer --workers") from None
        if isinstance(result, _Failure):
            raise result.error from RemoteTraceback(result.traceback)
        return result

    def stop(self, finished: bool) -> None:
        """Let the worker exit when all its results were taken; otherwise kill it (it may be blocked)."""
        if finished:
            self.task_writer.send(None)
        else:
            self.process.terminate()
        self.process.join()
        self.task_writer.close()
        self.result_reader.close()


def _serve(task_reader: Connection, result_writer: Connection, function: Callable, shared: Any) -> None:
    """A worker's loop: a thread takes tasks off the pipe as they come (so the parent never waits to
    send one while this process is busy or sending a result), and this thread runs them in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_tasks, args=(task_reader, tasks), daemon=True).start()
    for task in iter(tasks.get, None):
        try:
            result = function(shared, task)
        except Exception as error:
            result = _Failure(_picklable(error), traceback.format_exc())
        result_writer.send(result)


def _picklable(error: Exception) -> Exception:
    """The exception itself when it can be sent to the parent, else a RuntimeError naming it."""
    try:
        pickle.dumps(error)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _receive_tasks(task_reader: Connection, tasks: queue.SimpleQueue) -> None:
    """Queue each task from the parent; a None ends the worker, and so does the parent's death."""
    parent = multiprocessing.parent_process()
    while True:
        ready = wait([task_reader, parent.sentinel]) if parent is not None else [task_reader]
        if task_reader not in ready:
            os._exit(1)  # the parent is gone: nobody will read our results
        try:
            task = task_reader.recv()
        except EOFError:
            task = None
        tasks.put(task)
        if task is None:
            return
