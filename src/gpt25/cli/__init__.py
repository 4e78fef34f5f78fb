"""The `gpt25` command line (`main`): each sub-module's `register(subparsers)` adds its commands; handlers
import torch and the rest only when they run, so `gpt25 --help` is instant."""

from __future__ import annotations

import argparse
import os
import sys

from gpt25 import __version__
from gpt25.cli import chat, checkpoint, data, demo, evaluate, export, serve, tokenizer, train
from gpt25.cli.flags import FlagParser

COMMAND_MODULES = (demo, tokenizer, data, train, checkpoint, evaluate, chat, export, serve)
# Exceptions that mean bad input (a wrong path, value or permission): one line, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
               ConnectionError)


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="gpt25",
        description="Train a GPT-2-class language model from scratch: "
        "tokenizer -> data -> model -> training -> eval / sampling -> export.",
        epilog="Multi-word flags are written with underscores (--vocab_size); the dashed spelling "
        "(--vocab-size) is accepted too.",
    )
    parser.add_argument("--version", action="version", version=f"gpt25 {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse `argv` and run the chosen command; user errors exit with one line, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except BrokenPipeError:
        # The reader went away (`gpt25 ... | head`): not an error of ours. Python would otherwise
        # complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, as for a command the shell saw killed by it
    except USER_ERRORS as error:
        print(f"gpt25 {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"gpt25 {args.command}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(result or 0)  # a handler returns its exit status, or None for success
