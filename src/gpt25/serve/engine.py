"""The serving engine: one thread that decodes every active request together (continuous batching).

Waiting requests join at a step boundary (prefilled together into free rows of a `BatchKVCache`)
and leave when they finish or are cancelled; each row samples with its own settings and generator,
so its tokens do not depend on the rest of the batch. Manual: docs/serve.md ("The engine").
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gpt25.engine import (
    BatchKVCache,
    TextStream,
    check_fits,
    decoding,
    sample_rows,
    seeded_generator,
    validate_sampling,
)

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


class QueueFull(Exception):
    """The engine's waiting queue is at its cap; the client should retry later."""


@dataclass
class Request:
    """One generation: prompt ids, limits, sampling settings, and `on_event` for what it produces.

    `on_event(kind, value)` is called from the engine's thread: ("text", piece) for each new piece
    of text, then once ("done", finish_reason), finish_reason one of stop / length / cancelled.
    `stop_ids` end the generation without being part of it; `stop` strings cut the text before them.
    """

    prompt_ids: list[int]
    max_tokens: int
    on_event: Callable[[str, str], None]
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    stop: tuple[str, ...] = ()
    completion_ids: list[int] = field(default_factory=list)
    text: str = ""
    cancelled: bool = False
    finish_reason: str | None = None

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step boundary (safe from any thread)."""
        self.cancelled = True


class Row:
    """A request being decoded: its generator, its text so far and the token it feeds next."""

    def __init__(self, request: Request, token_bytes: dict[int, bytes], device: torch.device) -> None:
        self.request = request
        self.stream = TextStream(token_bytes)
        self.generator = seeded_generator(device, request.seed)
        self.sent = 0  # characters of request.text already sent
        self.next_token = 0

    def accept(self, token_id: int) -> bool:
        """Take a sampled token: send the text it completes; True when the row has finished."""
        request = self.request
        if token_id in request.stop_ids:
            return self.finish(FINISH_STOP)
        request.completion_ids.append(token_id)
        self.next_token = token_id
        request.text += self.stream.push(token_id)
        if self.send_until_stop():
            return True
        if len(request.completion_ids) >= request.max_tokens:
            return self.finish(FINISH_LENGTH)
        return False

    def send_until_stop(self) -> bool:
        """Send the text no stop string can still claim; on a stop string, cut there and finish."""
        request = self.request
        if not request.stop:
            self.send(len(request.text))
            return False
        search_from = max(0, self.sent - max(map(len, request.stop)))
        found = [index for index in (request.text.find(stop, search_from) for stop in request.stop) if index >= 0]
        if found:
            request.text = request.text[: min(found)]
            return self.finish(FINISH_STOP, flush=False)
        self.send(len(request.text) - held_back(request.text, request.stop))
        return False

    def send(self, end: int) -> None:
        if end > self.sent:
            self.request.on_event("text", self.request.text[self.sent : end])
            self.sent = end

    def finish(self, reason: str, flush: bool = True) -> bool:
        """Send what is left (unless cancelled), then the done event; `flush` ends a cut UTF-8 character."""
        request = self.request
        if flush:
            request.text += self.stream.close()
        if reason != FINISH_CANCELLED:
            self.send(len(request.text))
        request.finish_reason = reason
        request.on_event("done", reason)
        return True


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that starts some stop string (it may yet complete one)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class Engine:
    """Runs `model` in one background thread, decoding up to `max_batch` requests together; `submit` queues one
    (QueueFull beyond `max_queue` waiting). `vocab_size` (the tokenizer's) bounds the ids sampled."""

    def __init__(self, model: torch.nn.Module, token_bytes: dict[int, bytes], vocab_size: int, *,
                 max_batch: int = 16, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model = model.eval()
        self.token_bytes = token_bytes
        self.vocab_size = vocab_size
        self.max_queue = max_queue
        parameter = next(model.parameters())
        self.device = parameter.device
        self.cache = BatchKVCache(model.config, max_batch, self.device, parameter.dtype)
        self.rows: list[Row] = []  # rows[i] decodes in the cache's slot i
        self.waiting: deque[Request] = deque()
        self.wakeup = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="gpt25-serve-engine", daemon=True)

    def start(self) -> Engine:
        self.thread.start()
        return self

    def stop(self) -> None:
        """End the loop (active requests are cancelled) and wait for the thread."""
        with self.wakeup:
            self.stopped = True
            self.wakeup.notify()
        self.thread.join()

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def submit(self, request: Request) -> None:
        """Queue `request` for the next step boundary; QueueFull when `max_queue` requests already wait for rows."""
        validate_sampling(request.temperature, request.top_p, request.top_k)
        check_fits(len(request.prompt_ids), request.max_tokens, self.context_length)
        if request.max_tokens < 1:
            raise ValueError(f"a request needs max_tokens >= 1, got {request.max_tokens}")
        with self.wakeup:
            if self.stopped:
                raise QueueFull("the engine has stopped")
            if len(self.rows) + len(self.waiting) >= self.cache.max_rows + self.max_queue:
                raise QueueFull(f"{len(self.rows)} rows are busy and {len(self.waiting)} requests wait for one")
            self.waiting.append(request)
            self.wakeup.notify()

    def load(self) -> tuple[int, int]:
        """(active rows, waiting requests)."""
        with self.wakeup:
            return len(self.rows), len(self.waiting)

    def _loop(self) -> None:
        """Admit, drop cancelled rows, step; on stop (or an error, which the thread then reports) cancel the rest."""
        try:
            with torch.inference_mode(), decoding(self.device):
                while self._wait_for_work():
                    self._admit()
                    self._drop_cancelled()
                    if self.rows:
                        self._step()
        finally:
            with self.wakeup:
                self.stopped = True
                waiting, self.waiting = list(self.waiting), deque()
            for row in self.rows:
                row.finish(FINISH_CANCELLED)
            for request in waiting:
                request.finish_reason = FINISH_CANCELLED
                request.on_event("done", FINISH_CANCELLED)

    def _wait_for_work(self) -> bool:
        with self.wakeup:
            while not self.stopped and not self.rows and not self.waiting:
                self.wakeup.wait()
            return not self.stopped

    def _admit(self) -> None:
        """Prefill the waiting requests that fit in free rows, in one forward; each samples its first token."""
        with self.wakeup:
            admitted = []
            while self.waiting and len(self.rows) + len(admitted) < self.cache.max_rows:
                admitted.append(self.waiting.popleft())
        for request in admitted:
            if request.cancelled:
                request.finish_reason = FINISH_CANCELLED
                request.on_event("done", FINISH_CANCELLED)
        new_rows = [Row(request, self.token_bytes, self.device) for request in admitted if not request.cancelled]
        if new_rows:
            logits = self.cache.prefill(self.model, [row.request.prompt_ids for row in new_rows], self.vocab_size)
            with self.wakeup:
                self.rows += new_rows
            self._accept(logits, len(self.rows) - len(new_rows))

    def _step(self) -> None:
        """One token for every active row, then drop the rows that finished."""
        tokens = torch.tensor([row.next_token for row in self.rows], dtype=torch.long, device=self.device)
        self._accept(self.cache.step(self.model, tokens, self.vocab_size), 0)

    def _accept(self, logits: torch.Tensor, first: int) -> None:
        """Sample a token for rows[first:] from their logits (rows, vocab); drop the rows that finished."""
        rows = self.rows[first:]
        settings = [(row.request.temperature, row.request.top_k, row.request.top_p) for row in rows]
        tokens = sample_rows(logits, settings, [row.generator for row in rows])
        finished = [first + index for index, (row, token) in enumerate(zip(rows, tokens, strict=True))
                    if row.accept(token)]
        self._remove(finished)

    def _drop_cancelled(self) -> None:
        cancelled = [slot for slot, row in enumerate(self.rows) if row.request.cancelled]
        for slot in cancelled:
            self.rows[slot].finish(FINISH_CANCELLED)
        self._remove(cancelled)

    def _remove(self, slots: list[int]) -> None:
        """Free the slots (highest first, so each moved last row is one that stays)."""
        with self.wakeup:
            for slot in sorted(slots, reverse=True):
                self.cache.remove_row(slot)
                last = self.rows.pop()
                if slot < len(self.rows):
                    self.rows[slot] = last
