"""`gpt25 serve`: an OpenAI-compatible API and a chat page for a checkpoint. Manual: docs/serve.md."""

from __future__ import annotations

import argparse
import functools

from gpt25.cli.flags import add_command, add_model_arguments, model_inputs


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "serve", run_serve,
        help="serve a checkpoint over an OpenAI-compatible HTTP API, with a chat page",
        description="POST /v1/chat/completions (a model with chat role tokens) and /v1/completions, GET /v1/models, "
        "/health and / (a chat page). Concurrent requests are decoded together in one batch.",
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max_batch", type=int, default=16, help="requests decoded together at most (default 16)")
    parser.add_argument("--max_queue", type=int, default=64, help="requests waiting for a row; more get 429 (default 64)")
    parser.add_argument("--max_tokens", type=int, default=512, help="cap on max_tokens per request (default 512)")
    parser.add_argument("--max_prompt_tokens", type=int, default=None,
                        help="cap on prompt tokens (default: the context length less one)")
    parser.add_argument("--max_body_bytes", type=int, default=1_000_000, help="cap on a request body (default 1 MB)")
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' on every /v1 route")


def run_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from gpt25.serve.api import Limits, create_app, load_served

    for name in ("max_batch", "max_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1-65535, got {args.port}")
    load = functools.partial(load_served, *model_inputs(args), max_batch=args.max_batch, max_queue=args.max_queue)
    limits = Limits(args.api_key, args.max_body_bytes, args.max_prompt_tokens, args.max_tokens)
    uvicorn.run(create_app(load, limits), host=args.host, port=args.port, log_level="info")
