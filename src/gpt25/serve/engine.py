"""The serving engine: one decoding loop that batches every active request (continuous batching).

A request waits in a queue until a row is free; at the next step boundary it is prefilled alone
(its prompt through the model on a one-row `KVCache`, exactly as `gpt25.sample.generate` does),
its keys and values are copied into a free slot of the shared `BatchKVCache`, and from then on it
decodes together with the other rows: one forward of (rows, 1) tokens per step. A row that
finishes (a stop token, a stop string, `max_tokens`) or is cancelled leaves at the next boundary
and the others go on. Sampling settings and seeds are per row (one generator each), so a row's
tokens do not depend on what else is in the batch.

Rows have different lengths. The batch cache keeps them padded: slot i holds row i's keys and
values at positions [0, length_i), each new token is written at its own row's position, rotated by
its own position's RoPE angles, and attends under a (rows, 1, 1, keys) mask of its row's filled
positions. Active rows always occupy slots [0, rows): a leaving row's slot takes the last row's
keys and values (one row copied), so a step reads contiguous views and never gathers the cache.
The CUDA-graph decoding step (`gpt25.inference.DecodeStep`) stays single-request: here each step
runs eagerly, its shapes change as rows come and go.
"""

from __future__ import annotations

import codecs
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.attention import sdpa_kernel

from gpt25.inference import KVCache
from gpt25.model import ModelConfig
from gpt25.sample import DECODING_ATTENTION_BACKENDS, sample_next_token, validate_sampling

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


class QueueFull(Exception):
    """The engine's waiting queue is at its cap; the client should retry later."""


class BatchKVCache(KVCache):
    """Keys and values of up to `max_rows` sequences of different lengths, padded to the context length.

    Slots [0, batch_size) are the active rows; `lengths[i]` counts the positions slot i holds. A
    forward over (batch_size, 1) tokens writes each row's token at its own position and attends
    under a mask of that row's filled positions (the `DecodingState` questions, answered per row).
    """

    def __init__(self, config: ModelConfig, max_rows: int, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(config, max_rows, config.context_length, device, dtype)
        self.max_rows = max_rows
        self.batch_size = 0
        self.lengths = [0] * max_rows
        self.key_positions = torch.arange(config.context_length, device=device)  # (context,)
        self.step_positions = torch.zeros(0, dtype=torch.long, device=device)  # (rows,) this step's positions

    def add_row(self, prefilled: KVCache, length: int) -> int:
        """Copy a one-row cache's first `length` positions into the next free slot; return the slot."""
        slot = self.batch_size
        for layer, (keys, values) in enumerate(zip(prefilled.keys, prefilled.values, strict=True)):
            self.keys[layer][slot, :, :length] = keys[0, :, :length]
            self.values[layer][slot, :, :length] = values[0, :, :length]
        self.lengths[slot] = length
        self.batch_size += 1
        return slot

    def remove_row(self, slot: int) -> None:
        """Free `slot`: the last active row moves into it (its keys, values and length)."""
        last = self.batch_size - 1
        if slot != last:
            length = self.lengths[last]
            for keys, values in zip(self.keys, self.values, strict=True):
                keys[slot, :, :length] = keys[last, :, :length]
                values[slot, :, :length] = values[last, :, :length]
            self.lengths[slot] = length
        self.batch_size = last

    def begin_step(self) -> None:
        """Fix this step's per-row positions (call before each forward of one token per row)."""
        lengths = self.lengths[: self.batch_size]
        self.step_positions = torch.tensor(lengths, dtype=torch.long, device=self.key_positions.device)
        self.position = max(lengths)  # the model checks position + 1 fits the context

    def token_positions(self, seq_len: int) -> torch.Tensor:
        """(rows, 1): each row's position, for learned position embeddings (broadcast as (rows, 1, d_model))."""
        self._require_one_token(seq_len)
        return self.step_positions[:, None]

    def rotary_angles(self, cos: torch.Tensor, sin: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (rows, 1, 1, 1, head_dim / 2): each row's angles, broadcast over q/k (rows, 1, 2, heads, ...)."""
        self._require_one_token(seq_len)
        return cos[self.step_positions, None, None, None, :], sin[self.step_positions, None, None, None, :]

    def update(self, layer_index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (rows, heads, 1, head_dim) at each row's position; return keys/values (rows, heads, keys, head_dim)."""
        rows = torch.arange(self.batch_size, device=k.device)
        keys, values = self.keys[layer_index], self.values[layer_index]
        keys[rows, :, self.step_positions] = k[:, :, 0].to(keys.dtype)  # (rows, heads, head_dim)
        values[rows, :, self.step_positions] = v[:, :, 0].to(values.dtype)
        end = self.position + 1
        return keys[: self.batch_size, :, :end].to(k.dtype), values[: self.batch_size, :, :end].to(v.dtype)

    def attention_mask(self, seq_len: int) -> tuple[torch.Tensor | None, bool]:
        """(rows, 1, 1, keys) boolean: each row's token sees its own row's positions up to its own."""
        self._require_one_token(seq_len)
        visible = self.key_positions[None, : self.position + 1] <= self.step_positions[:, None]  # (rows, keys)
        return visible[:, None, None, :], False

    def advance(self, seq_len: int) -> None:
        for slot in range(self.batch_size):
            self.lengths[slot] += seq_len

    @staticmethod
    def _require_one_token(seq_len: int) -> None:
        if seq_len != 1:
            raise ValueError(f"a BatchKVCache decodes one token per row, got {seq_len}; prefill on a KVCache")


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
        self.token_bytes = token_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.generator = torch.Generator(device=device)
        if request.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(request.seed)
        self.sent = 0  # characters of request.text already sent
        self.next_token = 0

    def sample(self, logits: torch.Tensor) -> int:
        """One token from this row's logits (1, vocab) with its own settings and generator."""
        request = self.request
        token = sample_next_token(
            logits, temperature=request.temperature, top_k=request.top_k, top_p=request.top_p,
            generator=self.generator,
        )
        return int(token[0])

    def accept(self, token_id: int) -> bool:
        """Take a sampled token: send the text it completes; True when the row has finished."""
        request = self.request
        if token_id in request.stop_ids:
            return self.finish(FINISH_STOP)
        request.completion_ids.append(token_id)
        self.next_token = token_id
        request.text += self.decoder.decode(self.token_bytes.get(token_id, b""))
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
            request.text += self.decoder.decode(b"", final=True)
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
    """Runs `model` in one background thread, decoding up to `max_batch` requests together.

    `submit` queues a request (QueueFull beyond `max_queue` waiting); the thread admits waiting
    requests at each step boundary, steps every active row once, and drops finished or cancelled
    rows. `vocab_size` (the tokenizer's) bounds the ids sampled; `token_bytes` maps ids to bytes.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        token_bytes: dict[int, bytes],
        vocab_size: int,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
    ) -> None:
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
        """Queue `request` for the next step boundary; QueueFull when `max_queue` requests already wait."""
        validate_sampling(request.temperature, request.top_p, request.top_k)
        if not request.prompt_ids or request.max_tokens < 1:
            raise ValueError(f"a request needs prompt tokens and max_tokens >= 1, got {request.max_tokens}")
        if len(request.prompt_ids) + request.max_tokens > self.context_length:
            raise ValueError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.max_tokens}) must fit "
                f"the context length {self.context_length}; shorten the prompt or ask for fewer tokens"
            )
        with self.wakeup:
            if self.stopped:
                raise QueueFull("the engine has stopped")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(request)
            self.wakeup.notify()

    def load(self) -> tuple[int, int]:
        """(active rows, waiting requests)."""
        with self.wakeup:
            return len(self.rows), len(self.waiting)

    def _loop(self) -> None:
        """Admit, drop cancelled rows, step; on stop (or an error, which the thread then reports) cancel the rest."""
        try:
            with torch.inference_mode(), sdpa_kernel(DECODING_ATTENTION_BACKENDS):
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
        """Prefill waiting requests into free rows, each sampling its first token."""
        while len(self.rows) < self.cache.max_rows:
            with self.wakeup:
                if not self.waiting:
                    return
                request = self.waiting.popleft()
            if request.cancelled:
                request.finish_reason = FINISH_CANCELLED
                request.on_event("done", FINISH_CANCELLED)
                continue
            self._prefill(request)

    def _prefill(self, request: Request) -> None:
        row = Row(request, self.token_bytes, self.device)
        length = len(request.prompt_ids)
        prefill_cache = KVCache(self.model.config, 1, length, self.device, self.cache.keys[0].dtype)
        prefill_cache.qkv_weights = self.cache.qkv_weights  # the stacked q/k/v weights, shared
        prompt = torch.tensor([request.prompt_ids], dtype=torch.long, device=self.device)
        logits = self.model(prompt, kv_cache=prefill_cache)[:, -1, : self.vocab_size]  # (1, vocab)
        if not row.accept(row.sample(logits)):
            self.cache.add_row(prefill_cache, length)
            with self.wakeup:
                self.rows.append(row)

    def _step(self) -> None:
        """One token for every active row, then drop the rows that finished."""
        tokens = torch.tensor([[row.next_token] for row in self.rows], dtype=torch.long, device=self.device)
        self.cache.begin_step()
        logits = self.model(tokens, kv_cache=self.cache)[:, -1, : self.vocab_size]  # (rows, vocab)
        finished = [slot for slot, row in enumerate(self.rows) if row.accept(row.sample(logits[slot : slot + 1]))]
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
