"""Serving test helpers: a byte tokenizer, tiny models saved as checkpoints, and a live server on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
import uvicorn

from gpt25.checkpoint import save_checkpoint
from gpt25.model import ModelConfig, TransformerLM
from gpt25.serve.api import Limits, Served, create_app, load_served
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import add_chat_tokens


def byte_tokenizer() -> Tokenizer:
    """Every byte is a token (ids 0..255), <|endoftext|> is 256."""
    return Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"])


def tiny_lm(vocab_size: int = 257, context_length: int = 256, seed: int = 0, arch: str = "gpt25") -> TransformerLM:
    torch.manual_seed(seed)
    config = ModelConfig.preset(arch, vocab_size=vocab_size, context_length=context_length, d_model=32, num_layers=2,
                                num_heads=2, d_ff=64)
    return TransformerLM(config).eval()


def save_model(folder: Path, chat: bool, context_length: int = 256) -> tuple[Path, Path]:
    """(checkpoint dir, tokenizer dir) of a tiny random model; `chat` adds the role tokens to both."""
    tokenizer, model = byte_tokenizer(), tiny_lm(context_length=context_length)
    if chat:
        tokenizer = add_chat_tokens(tokenizer)
        model.grow_vocab(tokenizer.vocab_size)
    tokenizer.save(folder / "tokenizer")
    save_checkpoint(model, None, 1, folder / "model")
    return folder / "model", folder / "tokenizer"


def loader(files: tuple[Path, Path], max_batch: int = 8, max_queue: int = 64,
           step_delay: float = 0.0) -> Callable[[], Served]:
    """Loads the model as `gpt25 serve` does; `step_delay` slows each decoding step (to stop a reply midway)."""

    def load() -> Served:
        served = load_served(*files, torch.device("cpu"), torch.float32, max_batch=max_batch, max_queue=max_queue)
        if step_delay:
            step = served.engine._step
            served.engine._step = lambda: (time.sleep(step_delay), step())
        return served

    return load


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def live_server(load: Callable[[], Served], limits: Limits | None = None, wait_ready: bool = True) -> Iterator:
    """(base URL, app) of a uvicorn server on 127.0.0.1 running in a thread; stopped on exit."""
    app = create_app(load, limits or Limits())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started or (wait_ready and app.state.served is None):
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(30)


def wait_until_idle(app, timeout: float = 10.0) -> tuple[int, int]:
    """Poll the engine until no row is active and nothing waits; returns its last (active, waiting)."""
    deadline = time.monotonic() + timeout
    load = app.state.served.engine.load()
    while load != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.02)
        load = app.state.served.engine.load()
    return load


def post(url: str, path: str, body: dict | bytes, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else None
    return httpx.post(url + path, json=None if content else body, content=content, headers=headers, timeout=30)
