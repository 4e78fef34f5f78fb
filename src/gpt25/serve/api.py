"""The HTTP API: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, /health and the chat page.

Requests are parsed by hand (not by pydantic models) so that every bad field gets OpenAI's error
JSON with one line saying what to fix. Generation runs on the `Engine`'s thread; its events come
back to the request's coroutine through a `Mailbox`. A streamed reply is server-sent events,
`data: {chunk}` per piece of text and `data: [DONE]` at the end; a client that goes away (a
closed stream, or a dropped connection while waiting for a whole reply) cancels its request, and
the engine frees the row at its next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt25.chat import trim_history
from gpt25.checkpoint import load_for_inference
from gpt25.engine import check_fits
from gpt25.sample import eot_id_or_none
from gpt25.serve.engine import FINISH_CANCELLED, Engine, QueueFull
from gpt25.serve.engine import Request as GenerationRequest
from gpt25.tokenizer.chat_format import has_chat_tokens, message_problem, render_prompt, reply_stop_ids

MAX_STOP_STRINGS = 4
DISCONNECT_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; `api_key` None serves without authentication."""

    api_key: str | None = None
    max_body_bytes: int = 1_000_000
    max_prompt_tokens: int | None = None  # None: the context length less one
    max_tokens: int = 512


@dataclass
class Served:
    """The loaded model as the API serves it."""

    engine: Engine
    tokenizer: Any
    model_name: str

    @property
    def chat(self) -> bool:
        return has_chat_tokens(self.tokenizer)


def load_served(checkpoint: str | Path, tokenizer: str | Path, device: torch.device, dtype: torch.dtype, *,
                max_batch: int, max_queue: int) -> Served:
    """Load a checkpoint and its tokenizer (checked to match) and start an engine on them."""
    model, tokenizer, _ = load_for_inference(checkpoint, tokenizer, device, dtype)
    engine = Engine(model, tokenizer.vocab, tokenizer.vocab_size, max_batch=max_batch, max_queue=max_queue)
    return Served(engine.start(), tokenizer, Path(checkpoint).resolve().name)


class ApiError(Exception):
    """An error answered as OpenAI's error JSON with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        error_type = {401: "authentication_error", 429: "rate_limit_error", 503: "service_unavailable"}.get(
            self.status, "invalid_request_error"
        )
        body = {"error": {"message": self.message, "type": error_type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def create_app(load: Callable[[], Served], limits: Limits = Limits()) -> FastAPI:
    """The app; `load` runs in a thread at startup, and the API answers 503 until it returns."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load_into, args=(app, load), daemon=True).start()
        yield
        served = app.state.served
        if served is not None:
            await asyncio.to_thread(served.engine.stop)

    app = FastAPI(title="gpt25", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = None
    app.state.load_error = None
    app.state.limits = limits
    add_routes(app)
    app.add_exception_handler(ApiError, lambda _request, error: error.response())
    app.add_exception_handler(
        StarletteHTTPException, lambda _request, error: ApiError(error.status_code, str(error.detail)).response()
    )
    return app


def load_into(app: FastAPI, load: Callable[[], Served]) -> None:
    """Run `load` and publish its result; a failure is kept and answered as 500 by every API route."""
    try:
        app.state.served = load()
    except Exception as error:  # any failure: the server stays up and says why
        app.state.load_error = f"{type(error).__name__}: {error}"
        print(f"gpt25 serve: error: loading the model failed: {app.state.load_error}", file=sys.stderr)


def add_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("gpt25.serve").joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health(request: Request) -> dict:
        served: Served | None = request.app.state.served
        if served is None:
            return {"status": "loading"}
        active, waiting = served.engine.load()
        return {"status": "ok", "model": served.model_name, "chat": served.chat, "active": active, "waiting": waiting}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        served = ready(request)
        return {"object": "list", "data": [{"id": served.model_name, "object": "model", "created": 0,
                                            "owned_by": "gpt25"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        served = ready(request)
        body = await read_json(request)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
        tokenizer = served.tokenizer
        prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
        stop_ids = frozenset(i for i in [eot_id_or_none(tokenizer)] if i is not None)
        return await answer(request, served, body, prompt_ids, stop_ids, CompletionShape())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        served = ready(request)
        if not served.chat:
            raise ApiError(400, f"model {served.model_name} is a base model without chat role tokens: "
                           "it answers /v1/completions only", code="model_not_chat")
        body = await read_json(request)
        messages = [dict(message, content=text_content(message)) if isinstance(message, dict) else message
                    for message in body.get("messages") or []] or None
        if problem := message_problem(messages):
            raise ApiError(400, f"{problem}; send messages as [{{\"role\": \"user\", \"content\": \"...\"}}]",
                           param="messages")
        fitted = {}
        if not isinstance(body.get("fit_context", False), bool):
            raise ApiError(400, "'fit_context' must be true or false", param="fit_context")
        if body.get("fit_context"):
            messages, body, fitted = fit_context(served, request.app.state.limits, messages, body)
        prompt_ids = render_prompt(served.tokenizer, messages)
        stop_ids = frozenset(reply_stop_ids(served.tokenizer))
        response = await answer(request, served, body, prompt_ids, stop_ids, ChatShape())
        response.headers.update(fitted)
        return response


def ready(request: Request) -> Served:
    """The served model, after the API key check; 401 / 503 errors otherwise."""
    limits: Limits = request.app.state.limits
    if limits.api_key is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {limits.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")
    served = request.app.state.served
    if request.app.state.load_error:
        raise ApiError(500, f"the model failed to load ({request.app.state.load_error}); fix it and restart")
    if served is None:
        raise ApiError(503, "the model is still loading; retry in a few seconds", headers={"Retry-After": "5"})
    return served


async def read_json(request: Request) -> dict:
    """The request's JSON object, read no further than the body-size cap (413 beyond it)."""
    cap = request.app.state.limits.max_body_bytes
    too_large = ApiError(413, f"request body larger than {cap} bytes; send a shorter prompt", code="body_too_large")
    if int(request.headers.get("content-length") or 0) > cap:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_large
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError as error:
        raise ApiError(400, f"the body is not valid JSON ({error}); send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def text_content(message: dict) -> object:
    """A message's content as a string: OpenAI's list of {"type": "text", "text"} parts joined."""
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        return "".join(str(part.get("text", "")) for part in content)
    return content


def sampling_fields(body: dict) -> dict:
    """temperature, top_p, top_k, seed and stop from the body (OpenAI's defaults), checked."""
    fields = {
        "temperature": number_field(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": number_field(body, "top_p", 1.0, 0.0, 1.0),
        "top_k": int_field(body, "top_k", None, 1),
        "seed": int_field(body, "seed", None, None),
    }
    if fields["top_p"] == 0:
        raise ApiError(400, "'top_p' must be in (0, 1]", param="top_p")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS or not all(
        isinstance(item, str) and item for item in stop
    ):
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
                       param="stop")
    if body.get("n", 1) != 1:
        raise ApiError(400, "'n' must be 1 (one choice per request)", param="n")
    return fields | {"stop": tuple(stop)}


def number_field(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number in [{low}, {high}], got {value!r}", param=name)
    return float(value)


def int_field(body: dict, name: str, default: int | None, low: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ApiError(400, f"'{name}' must be an integer{f' >= {low}' if low is not None else ''}, got {value!r}",
                       param=name)
    return value


def token_budget(body: dict, prompt_len: int, limits: Limits, context_length: int, prompt_param: str) -> int:
    """max_tokens for the request (default: what fits, up to the cap); 400 when the prompt is too long."""
    max_prompt = min(limits.max_prompt_tokens or context_length, context_length - 1)  # one token left to generate
    if prompt_len > max_prompt:
        raise ApiError(400, f"the prompt has {prompt_len} tokens, more than the {max_prompt} allowed; shorten it",
                       param=prompt_param, code="context_length_exceeded")
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = int_field(body, name, None, 1)
    if asked is None:
        return min(limits.max_tokens, context_length - prompt_len)
    if asked > limits.max_tokens:
        raise ApiError(400, f"'{name}' is {asked}, above this server's cap of {limits.max_tokens}", param=name)
    try:
        check_fits(prompt_len, asked, context_length, f"'{name}'")
    except ValueError as error:
        raise ApiError(400, str(error), param=name, code="context_length_exceeded") from None
    return asked


def fit_context(served: Served, limits: Limits, messages: list[dict], body: dict) -> tuple[list[dict], dict, dict]:
    """For a client that asks (`"fit_context": true`, as the chat page does): the newest messages that fit as
    `gpt25 chat` keeps them (`trim_history`, leaving the reply the asked max_tokens or half the context, the
    smaller) and the body with max_tokens capped at what fits beside them; headers report both. Without it a
    request that does not fit is refused (context_length_exceeded), as OpenAI's API does."""
    context_length = served.engine.context_length
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = min(int_field(body, name, limits.max_tokens, 1), limits.max_tokens)
    try:
        kept, dropped = trim_history(served.tokenizer, messages, context_length, min(asked, context_length // 2))
    except ValueError as error:
        raise ApiError(400, str(error), param="messages", code="context_length_exceeded") from None
    cap = min(asked, context_length - len(render_prompt(served.tokenizer, kept)))
    body = {key: value for key, value in body.items() if key != "max_completion_tokens"} | {"max_tokens": cap}
    return kept, body, {"x-gpt25-dropped-messages": str(dropped), "x-gpt25-max-tokens": str(cap)}


class CompletionShape:
    """OpenAI's /v1/completions response objects (and the request field a too long prompt is blamed on)."""

    object, chunk_object, id_prefix, prompt_param = "text_completion", "text_completion", "cmpl-", "prompt"

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def chunk_choice(self, text: str | None, finish_reason: str | None) -> dict:
        return self.choice(text or "", finish_reason)


class ChatShape:
    """OpenAI's /v1/chat/completions response objects (one per request: its first chunk names the role)."""

    object, chunk_object, id_prefix, prompt_param = "chat.completion", "chat.completion.chunk", "chatcmpl-", "messages"

    def __init__(self) -> None:
        self.role_sent = False

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

    def chunk_choice(self, text: str | None, finish_reason: str | None) -> dict:
        delta = {} if text is None else {"content": text}
        if not self.role_sent:  # as OpenAI: "role" in the first chunk's delta only
            delta, self.role_sent = {"role": "assistant", "content": text or ""}, True
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


async def answer(request: Request, served: Served, body: dict, prompt_ids: list[int], stop_ids: frozenset[int],
                 shape: CompletionShape | ChatShape) -> Response:
    """Check the request's fields, queue the generation, and answer whole or as a stream."""
    limits: Limits = request.app.state.limits
    fields = sampling_fields(body)
    max_tokens = token_budget(body, len(prompt_ids), limits, served.engine.context_length, shape.prompt_param)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    events = Mailbox(asyncio.get_running_loop())
    generation = GenerationRequest(prompt_ids, max_tokens, events.post if stream else events.post_done,
                                   stop_ids=stop_ids, **fields)
    try:
        served.engine.submit(generation)
    except QueueFull as error:
        raise ApiError(429, f"the server is busy ({error}); retry shortly", headers={"Retry-After": "1"}) from None
    meta = {"id": shape.id_prefix + uuid.uuid4().hex, "created": int(time.time()), "model": served.model_name}
    if stream:
        return StreamingResponse(stream_events(events, generation, meta, shape), media_type="text/event-stream")
    return await whole_reply(request, events, generation, meta, shape)


class Mailbox:
    """The engine thread's events for one request, taken by the request's coroutine."""
    # `post` wakes the event loop only when the coroutine waits, and `take` hands over every event so far:
    # tokens that come while it writes cost no wake-up each, and its work stays small beside the decoding.

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: deque[tuple[str, str]] = deque()
        self.lock = threading.Lock()
        self.waiter: asyncio.Future | None = None

    def post(self, kind: str, value: str) -> None:
        with self.lock:
            self.events.append((kind, value))
            waiter, self.waiter = self.waiter, None
        if waiter is not None:
            self.loop.call_soon_threadsafe(wake, waiter)

    def post_done(self, kind: str, value: str) -> None:
        """`post` for the done event alone: a whole reply reads the text at the end, so no token wakes the loop."""
        if kind == "done":
            self.post(kind, value)

    async def take(self) -> list[tuple[str, str]]:
        """Every event posted so far (waiting for one when there is none), oldest first."""
        while True:
            with self.lock:
                if self.events:
                    events, self.events = list(self.events), deque()
                    return events
                self.waiter = waiter = self.loop.create_future()
            await waiter


def wake(waiter: asyncio.Future) -> None:
    if not waiter.done():  # a request cancelled while waiting has cancelled its future
        waiter.set_result(None)


def usage(generation: GenerationRequest) -> dict:
    prompt, completion = len(generation.prompt_ids), len(generation.completion_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def whole_reply(request: Request, events: Mailbox, generation: GenerationRequest, meta: dict,
                      shape: CompletionShape | ChatShape) -> Response:
    """Wait for the end of the generation, cancelling it if the client disconnects meanwhile."""
    watcher = asyncio.create_task(cancel_on_disconnect(request, generation))
    try:
        [(_, finish_reason)] = await events.take()  # post_done lets the done event alone through
    finally:
        watcher.cancel()
        if generation.finish_reason is None:
            generation.cancel()
    if finish_reason == FINISH_CANCELLED:
        raise ApiError(503, "the reply was cancelled (the client went away or the server is stopping)",
                       headers={"Retry-After": "5"})
    return JSONResponse(meta | {"object": shape.object, "choices": [shape.choice(generation.text, finish_reason)],
                                "usage": usage(generation)})


async def cancel_on_disconnect(request: Request, generation: GenerationRequest) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
    generation.cancel()


async def stream_events(events: Mailbox, generation: GenerationRequest, meta: dict,
                        shape: CompletionShape | ChatShape) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of text (those taken together in one write), a last chunk with
    finish_reason and usage, [DONE]. Starlette cancels this generator when the client goes away: the finally
    then cancels the row."""
    try:
        chunk = meta | {"object": shape.chunk_object}
        finish_reason = None
        while finish_reason is None:
            written = []
            for kind, value in await events.take():
                if kind == "text":
                    written.append(sse(chunk | {"choices": [shape.chunk_choice(value, None)]}))
                elif value != FINISH_CANCELLED:
                    finish_reason = value
                    written.append(sse(chunk | {"choices": [shape.chunk_choice(None, value)], "usage": usage(generation)}))
                    written.append("data: [DONE]\n\n")
                else:
                    return
            yield "".join(written)
    finally:
        if generation.finish_reason is None:
            generation.cancel()


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
