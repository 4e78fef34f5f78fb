"""map_in_order: results in input order, worker errors and deaths raised in the parent, no leaks."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from gpt25.tokenizer import workers
from gpt25.tokenizer.workers import RemoteTraceback, map_in_order


def scaled(factor: int, task: int) -> np.ndarray:
    """A result larger than a pipe's buffer, so that workers block while sending it."""
    return np.full(100_000 + task, task * factor, dtype=np.int64)


def echo_large_task(factor: int, task: bytes) -> int:
    return len(task) * factor


def fail_on_three(factor: int, task: int) -> int:
    if task == 3:
        raise KeyError(f"task {task}")
    return task * factor


def die_on_three(factor: int, task: int) -> int:
    if task == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return task * factor


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle")


def raise_unpicklable(factor: int, task: int) -> int:
    if task == 3:  # not the first task, which runs in the parent
        raise Unpicklable("bad")
    return task


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_in_input_order(workers: int) -> None:
    results = list(map_in_order(scaled, iter(range(40)), workers, 7))
    assert [task for task, _ in results] == list(range(40))
    assert all(len(result) == 100_000 + task and result[0] == task * 7 for task, result in results)


def test_large_tasks_and_results_do_not_deadlock() -> None:
    tasks = [b"x" * (1 << 20) for _ in range(12)]  # each far larger than a pipe's buffer
    assert [result for _, result in map_in_order(echo_large_task, iter(tasks), 2, 3)] == [3 << 20] * 12


def test_a_worker_exception_is_raised_with_its_traceback() -> None:
    with pytest.raises(KeyError, match="task 3") as error:
        list(map_in_order(fail_on_three, iter(range(10)), 2, 1))
    assert isinstance(error.value.__cause__, RemoteTraceback)
    assert "fail_on_three" in str(error.value.__cause__)


def test_an_exception_that_does_not_pickle_is_named() -> None:
    with pytest.raises(RuntimeError, match="Unpicklable: bad"):
        list(map_in_order(raise_unpicklable, iter(range(4)), 2, 1))


def test_a_killed_worker_is_an_error_not_a_hang() -> None:
    with pytest.raises(RuntimeError, match=r"worker process \d+ died \(exit code -9\)"):
        list(map_in_order(die_on_three, iter(range(10)), 2, 1))


def record_workers(monkeypatch: pytest.MonkeyPatch) -> list:
    """The processes map_in_order starts from now on, as it starts them."""
    started = []
    original = workers._Worker.__init__

    def remember(self, *args) -> None:
        original(self, *args)
        started.append(self.process)

    monkeypatch.setattr(workers._Worker, "__init__", remember)
    return started


def test_closing_early_stops_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    started = record_workers(monkeypatch)
    results = map_in_order(scaled, iter(range(1000)), 2, 1)
    assert next(results)[0] == 0 and next(results)[0] == 1
    results.close()
    assert len(started) == 2 and not any(process.is_alive() for process in started)


def test_workers_exit_when_the_parent_dies(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A parent killed mid-run (SIGKILL: no cleanup) leaves no worker behind."""
    pid_file = tmp_path / "pids"
    started = record_workers(monkeypatch)
    child = os.fork()
    if child == 0:  # the parent-to-be-killed: start workers, record their pids, wait
        try:
            results = map_in_order(scaled, iter(range(10_000)), 2, 1)
            next(results)
            next(results)
            pid_file.write_text(" ".join(str(process.pid) for process in started))
            time.sleep(60)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker_pids = [int(pid) for pid in pid_file.read_text().split()]
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in worker_pids if _alive(pid)]
    for pid in survivors:  # do not leave them holding pytest's output open
        os.kill(pid, signal.SIGKILL)
    assert len(worker_pids) == 2 and not survivors


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (reparented workers wait for init to reap them)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status
