"""`gpt25 tokenizer train|encode|decode|info`: train a byte-level BPE and use it from the shell.

    gpt25 tokenizer train --input data/*.txt --vocab-size 8192 --special-token "<|endoftext|>" --out tok/
    echo "Hello world" | gpt25 tokenizer encode --tokenizer tok/      # prints ids separated by spaces
    echo "15496 995" | gpt25 tokenizer decode --tokenizer tok/
    gpt25 tokenizer info tok/
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `gpt25 tokenizer ...` to the `gpt25` parser."""
    parser = subparsers.add_parser(
        "tokenizer",
        help="train, inspect and run a byte-level BPE tokenizer",
        description="Train a byte-level BPE tokenizer (GPT-2's pre-tokenizer) and encode/decode with it.",
    )
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    _register_train(commands)
    _register_encode(commands)
    _register_decode(commands)
    info = commands.add_parser("info", help="print vocab size, special tokens and the longest tokens",
                               description="Describe a saved tokenizer.")
    info.add_argument("tokenizer_dir", type=Path, metavar="DIR", help="folder written by `gpt25 tokenizer train`")
    info.add_argument("--longest", type=int, default=10, help="how many of the longest tokens to show")
    info.set_defaults(handler=run_info)


def _register_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a tokenizer on text files",
        description="Train a byte-level BPE tokenizer on UTF-8 text files (any size: they are streamed).",
    )
    train.add_argument("--input", type=Path, nargs="+", required=True, metavar="PATH", help="UTF-8 text file(s)")
    train.add_argument("--vocab-size", type=int, required=True, help="final vocab size (>= 256 + special tokens)")
    train.add_argument("--special-token", action="append", default=None, metavar="TOKEN",
                       help='special token, repeatable (default: "<|endoftext|>")')
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the tokenizer to")
    train.add_argument("--force", action="store_true", help="replace DIR if it already exists")
    train.add_argument("--workers", type=int, default=None, help="processes counting pre-tokens (default: up to 2)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=run_train)


def _register_encode(commands: argparse._SubParsersAction) -> None:
    encode = commands.add_parser("encode", help="encode UTF-8 text from stdin to ids on stdout",
                                 description="Read UTF-8 text on stdin, write token ids separated by spaces.")
    encode.add_argument("--tokenizer", type=Path, required=True, metavar="DIR", help="saved tokenizer folder")
    encode.set_defaults(handler=run_encode)


def _register_decode(commands: argparse._SubParsersAction) -> None:
    decode = commands.add_parser("decode", help="decode ids from stdin to text on stdout",
                                 description="Read whitespace-separated token ids on stdin, write the text.")
    decode.add_argument("--tokenizer", type=Path, required=True, metavar="DIR", help="saved tokenizer folder")
    decode.set_defaults(handler=run_decode)


def run_train(args: argparse.Namespace) -> int:
    from gpt25.tokenizer import Tokenizer, train_bpe

    special_tokens = args.special_token if args.special_token is not None else ["<|endoftext|>"]
    out: Path = args.out
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    started = time.perf_counter()
    vocab, merges = train_bpe(args.input, args.vocab_size, special_tokens,
                              num_workers=args.workers, progress=not args.quiet)
    tokenizer = Tokenizer(vocab, merges, special_tokens)
    _save_replacing(tokenizer, out)
    print(f"trained {tokenizer.vocab_size} tokens ({len(merges)} merges) in "
          f"{time.perf_counter() - started:.1f} s -> {out}", file=sys.stderr)
    return 0


def _save_replacing(tokenizer, out: Path) -> None:
    """Save into a fresh sibling folder, then swap it in, so DIR is never left half-written."""
    from gpt25.tokenizer.io import current_umask

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        staging.chmod(0o777 & ~current_umask())
        tokenizer.save(staging)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _read_stdin_text() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"stdin: invalid UTF-8 at byte offset {error.start}") from None


def run_encode(args: argparse.Namespace) -> int:
    from gpt25.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    ids = tokenizer.encode(_read_stdin_text())
    sys.stdout.write(" ".join(map(str, ids)) + "\n")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from gpt25.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    ids = []
    for word in _read_stdin_text().split():
        try:
            ids.append(int(word))
        except ValueError:
            raise ValueError(f"stdin: {word!r} is not a token id (expected integers separated by spaces)") from None
    sys.stdout.buffer.write(tokenizer.decode_bytes(ids).decode("utf-8", errors="replace").encode("utf-8"))
    sys.stdout.flush()
    return 0


def run_info(args: argparse.Namespace) -> int:
    from gpt25.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer_dir)
    print(f"tokenizer:      {args.tokenizer_dir}")
    print(f"vocab size:     {tokenizer.vocab_size}")
    print(f"merges:         {len(tokenizer.merges)}")
    print(f"special tokens: {', '.join(f'{token!r} = {tokenizer.token_id(token)}' for token in tokenizer.special_tokens) or 'none'}")
    print(f"fingerprint:    {tokenizer.fingerprint()}")
    print(f"encoder:        {tokenizer.encoder_kind}")
    specials = {token.encode("utf-8") for token in tokenizer.special_tokens}
    regular = [(token_id, token) for token_id, token in tokenizer.vocab.items() if token not in specials]
    longest = sorted(regular, key=lambda item: (-len(item[1]), item[0]))[: max(args.longest, 0)]
    print(f"longest tokens ({len(longest)}):")
    for token_id, token in longest:
        print(f"  {token_id:>7}  {len(token):>3} bytes  {token.decode('utf-8', errors='replace')!r}")
    return 0
