"""`gpt25 chat`: talk to a chat model in the terminal, or answer one `--prompt`. Manual: docs/chat.md."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import TextIO

from gpt25.cli.flags import add_command, add_model_arguments, add_sampling_arguments, model_inputs, one_line_warnings

COMMANDS_HELP = ("/reset clears the history, /system TEXT sets the system message (/system alone removes it), "
                 "/quit or Ctrl-D leaves; Ctrl-C stops a reply")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "chat", run_chat,
        help="talk to a chat model (streamed replies), or answer one --prompt",
        description="An interactive chat with a model fine-tuned by `gpt25 sft`: replies are streamed, the history "
        "stays inside the context by dropping the oldest turns. " + COMMANDS_HELP + ". With --prompt, answer "
        "that one message on stdout and exit.",
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", default=None, help="answer this one message and exit (the reply alone on stdout)")
    parser.add_argument("--system", default=None, help="system message that opens the conversation")
    add_sampling_arguments(parser, None, "per reply (default: half the context, at most 256)")


def run_chat(args: argparse.Namespace) -> None:
    from gpt25.chat import reply_budget
    from gpt25.checkpoint import load_for_inference
    from gpt25.engine import validate_sampling
    from gpt25.tokenizer.chat_format import require_chat_tokens

    validate_sampling(args.temperature, args.top_p, args.top_k)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty; give the message to answer")
    model, tokenizer, _ = load_for_inference(*model_inputs(args))
    require_chat_tokens(tokenizer)
    args.max_new_tokens = reply_budget(args.max_new_tokens, model.config.context_length)
    session = ChatSession(model, tokenizer, args)
    with one_line_warnings("chat"):
        if args.prompt is not None:
            session.reply(args.prompt, sys.stdout)
        else:
            session.interact(sys.stdin, sys.stdout)


class ChatSession:
    """One conversation: its history (kept inside the context), the terminal loop and the slash commands."""

    def __init__(self, model, tokenizer, args: argparse.Namespace) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                         "top_k": args.top_k, "static_decode": False if args.no_cuda_graph else None}
        self.seed = args.seed
        self.system = args.system
        self.history: list[dict] = []

    def interact(self, stdin: TextIO, stdout: TextIO) -> None:
        """Read messages and commands from `stdin` until /quit or end of input (Ctrl-D); stream each reply."""
        print(f"chat with a {self.model.num_params():,}-parameter model (context {self.model.config.context_length} "
              f"tokens). {COMMANDS_HELP}.", file=stdout, flush=True)
        while True:
            try:
                line = read_line(stdin, stdout)
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line being typed, as shells do
                print(file=stdout, flush=True)
                continue
            if line is None or line.strip() == "/quit":
                return
            if line.strip():
                self.handle(line.strip(), stdout)

    def handle(self, line: str, stdout: TextIO) -> None:
        command, _, rest = line.partition(" ")
        if command == "/reset":
            self.history.clear()
            print("(history cleared; the system message stays)" if self.system else "(history cleared)",
                  file=stdout, flush=True)
        elif command == "/system":
            self.system = rest.strip() or None
            print(f"(system message {'set' if self.system else 'removed'})", file=stdout, flush=True)
        elif command.startswith("/"):
            print(f"(unknown command {command}; {COMMANDS_HELP})", file=stdout, flush=True)
        else:
            try:
                self.reply(line, stdout)
            except KeyboardInterrupt:
                print("(reply stopped)", file=stdout, flush=True)
            except ValueError as error:  # e.g. a message too long for the context: say so, keep talking
                print(f"gpt25 chat: error: {error}", file=sys.stderr, flush=True)

    def reply(self, message: str, stdout: TextIO) -> str:
        """Stream the reply to `message` onto `stdout`; the exchange joins the history (after a Ctrl-C, as printed)."""
        from gpt25.chat import stream_chat, trim_history

        context_length = self.model.config.context_length
        kept, num_dropped = trim_history(self.tokenizer, [*self.conversation(), {"role": "user", "content": message}],
                                         context_length, self.sampling["max_new_tokens"])  # ValueError: no change
        self.history = kept[1:] if self.system else kept
        if num_dropped:
            print(f"gpt25 chat: note: dropped the {num_dropped} oldest messages to stay within the context of "
                  f"{context_length} tokens", file=sys.stderr, flush=True)
        pieces: list[str] = []
        try:
            for piece in stream_chat(self.model, self.tokenizer, self.conversation(), seed=self.seed, **self.sampling):
                stdout.write(piece)
                stdout.flush()
                pieces.append(piece)
        finally:
            reply = "".join(pieces)
            if reply.strip():  # after a blank reply the user's message stays alone: a conversation takes no empty turn
                self.history.append({"role": "assistant", "content": reply})
            print(file=stdout, flush=True)
        return reply

    def conversation(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history


def read_line(stdin: TextIO, stdout: TextIO) -> str | None:
    """One line typed after the prompt (with line editing on a terminal), or None at end of input (Ctrl-D)."""
    if stdin is sys.stdin and stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (imported for its side effect: input() gains line editing and history)
        try:
            return input("> ")
        except EOFError:
            line = ""  # end of input
    else:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
    if not line:
        print(file=stdout, flush=True)  # the shell's prompt then starts on a line of its own
        return None
    return line.rstrip("\n")
