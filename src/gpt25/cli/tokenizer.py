"""`gpt25 tokenizer train|import|encode|decode|info`: train a byte-level BPE and use it from the shell.
Manual: docs/tokenizer.md (Commands)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from gpt25.cli.flags import add_command
from gpt25.files import atomic_folder

END_OF_TEXT = "<|endoftext|>"  # gpt25.tokenizer.END_OF_TEXT, which this module does not import: `gpt25 --help` stays fast


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer", help="train, inspect and run a byte-level BPE tokenizer",
        description="Train a byte-level BPE tokenizer (GPT-2's pre-tokenizer) and encode/decode with it.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    train = add_command(commands, "train", run_train, help="train a tokenizer on text files",
                        description="Train a byte-level BPE tokenizer on UTF-8 text files (any size: they are streamed).")
    train.add_argument("--input", type=Path, nargs="+", required=True, metavar="PATH", help="UTF-8 text file(s)")
    train.add_argument("--vocab_size", type=int, required=True, help="final vocab size (>= 256 + special tokens)")
    _add_output_arguments(train, 'special token, repeatable (default: "<|endoftext|>"); when you give any, include '
                          '"<|endoftext|>" too: `gpt25 data prepare` needs it to end documents')
    train.add_argument("--workers", type=int, default=None, help="processes counting pre-tokens (default: up to 2)")
    train.add_argument("--no_progress", action="store_true", help="no progress bars")
    imported = add_command(
        commands, "import", run_import, help="convert GPT-2-style vocab.json + merges.txt into a gpt25 tokenizer folder",
        description="Write a gpt25 tokenizer folder from GPT-2-style files (e.g. OpenAI's GPT-2 vocab.json "
                    "and merges.txt); it encodes exactly as Tokenizer.from_files does.")
    imported.add_argument("--vocab", type=Path, required=True, metavar="FILE", help="GPT-2-style vocab.json")
    imported.add_argument("--merges", type=Path, required=True, metavar="FILE", help="GPT-2-style merges.txt")
    _add_output_arguments(imported, 'special token, repeatable (default: "<|endoftext|>", which GPT-2 has as id 50256)')
    for name, handler, help_text, description in (
        ("encode", run_encode, "encode UTF-8 text from stdin to ids on stdout",
         "Read UTF-8 text on stdin, write token ids separated by spaces."),
        ("decode", run_decode, "decode ids from stdin to text on stdout",
         "Read whitespace-separated token ids on stdin, write the text."),
    ):
        add_command(commands, name, handler, help=help_text, description=description).add_argument(
            "--tokenizer", type=Path, required=True, metavar="DIR", help="saved tokenizer folder")
    info = add_command(commands, "info", run_info, help="print vocab size, special tokens and the longest tokens",
                       description="Describe a saved tokenizer.")
    info.add_argument("tokenizer_dir", type=Path, metavar="DIR", help="folder written by `gpt25 tokenizer train`")
    info.add_argument("--longest", type=int, default=10, help="how many of the longest tokens to show")


def _add_output_arguments(parser: argparse.ArgumentParser, special_token_help: str) -> None:
    """--special_token, --out and --force, as `train` and `import` take them."""
    parser.add_argument("--special_token", action="append", default=None, metavar="TOKEN", help=special_token_help)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the tokenizer to")
    parser.add_argument("--force", action="store_true",
                        help="replace DIR if it is empty or holds a gpt25 tokenizer (a folder with other files is refused)")


def run_train(args: argparse.Namespace) -> None:
    from gpt25.tokenizer import Tokenizer, train_bpe

    special_tokens = _special_tokens(args)
    _check_out(args.out, args.force, args.input)  # before training, which may take hours
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if END_OF_TEXT not in special_tokens:
        print(f'gpt25 tokenizer: warning: no "{END_OF_TEXT}" special token: `gpt25 data prepare` needs it to end '
              f'documents; add --special_token "{END_OF_TEXT}"', file=sys.stderr)
    started = time.perf_counter()
    vocab, merges = train_bpe(args.input, args.vocab_size, special_tokens,
                              num_workers=args.workers, progress=not args.no_progress)
    tokenizer = Tokenizer(vocab, merges, special_tokens)
    _check_out(args.out, args.force, [])  # again: DIR may have changed while training
    with atomic_folder(args.out) as staging:  # DIR is never left half-written
        tokenizer.save(staging)
    print(f"trained {tokenizer.vocab_size} tokens ({len(merges)} merges) in "
          f"{time.perf_counter() - started:.1f} s -> {args.out}", file=sys.stderr)


def run_import(args: argparse.Namespace) -> None:
    from gpt25.tokenizer import Tokenizer

    _check_out(args.out, args.force, [args.vocab, args.merges])
    tokenizer = Tokenizer.from_files(args.vocab, args.merges, _special_tokens(args))
    with atomic_folder(args.out) as staging:  # DIR is never left half-written
        tokenizer.save(staging)
    print(f"imported {tokenizer.vocab_size} tokens ({len(tokenizer.merges)} merges) -> {args.out}", file=sys.stderr)


def _special_tokens(args: argparse.Namespace) -> list[str]:
    return args.special_token if args.special_token is not None else [END_OF_TEXT]


def _check_out(out: Path, force: bool, inputs: list[Path]) -> None:
    """Refuse an --out that cannot be written, or replaced (with --force) as it is neither empty nor a tokenizer."""
    from gpt25.tokenizer.io import MERGES_FILE, META_FILE, VOCAB_FILE

    for path in inputs:
        if path.resolve().is_relative_to(out.resolve()):
            raise ValueError(f"input {path} is inside --out {out}, which would be replaced; choose another --out")
    if out.is_symlink():
        raise ValueError(f"--out {out} is a symbolic link; pass the folder itself or choose another --out")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
    names = sorted(entry.name for entry in out.iterdir()) if out.is_dir() else []
    foreign = [name for name in names if name not in (META_FILE, VOCAB_FILE, MERGES_FILE) or not (out / name).is_file()]
    if not foreign and names and META_FILE not in names:
        foreign = names  # GPT-2's own vocab.json + merges.txt, say: not a gpt25 tokenizer
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(f"{out} holds files that are not a gpt25 tokenizer ({shown}); choose another --out")
    if out.is_dir() and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    _check_parent(out)


def _check_parent(out: Path) -> None:
    """The nearest existing folder above --out must be a folder we can write in (missing ones are created)."""
    ancestor = out.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FileExistsError(f"cannot create --out {out}: {ancestor} is a file, not a folder; choose another --out")
    try:  # a real folder, not os.access: root may "access" read-only file systems such as /proc
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".gpt25-check."))
    except OSError as error:
        raise PermissionError(f"cannot create --out {out}: cannot write in {ancestor} ({error.strerror}); "
                              "choose another --out") from None


def _read_stdin_text() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"stdin: invalid UTF-8 at byte offset {error.start}") from None


def run_encode(args: argparse.Namespace) -> None:
    from gpt25.tokenizer import Tokenizer

    ids = Tokenizer.load(args.tokenizer).encode(_read_stdin_text())
    sys.stdout.write(" ".join(map(str, ids)) + "\n")


def run_decode(args: argparse.Namespace) -> None:
    from gpt25.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    ids = []
    for word in _read_stdin_text().split():
        try:
            ids.append(int(word))
        except ValueError:
            raise ValueError(f"stdin: {word!r} is not a token id (expected integers separated by spaces)") from None
    sys.stdout.buffer.write(tokenizer.decode(ids).encode("utf-8"))
    sys.stdout.flush()


def run_info(args: argparse.Namespace) -> None:
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
