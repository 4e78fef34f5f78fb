"""`gpt25 data prepare | import-raw | download | corpus | chat-corpus | info`. Manual: docs/data.md."""

from __future__ import annotations

import argparse
import os

from gpt25.cli.flags import add_command, one_line_warnings

RECIPE_REPO = "itskoma/GPT2.5"  # the recipe's published data and checkpoints
SOURCE_HELP = "files, folders, globs, 'python-docs' (the embedded corpus) or 'hf:NAME[:CONFIG]' (Hugging Face, streamed)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="prepare token shards from text, download the recipe's data, write the embedded corpus",
        description="Turn corpora into training-ready token shards (see `gpt25 data prepare --help`).")
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    for register_command in (_register_prepare, _register_import_raw, _register_download, _register_corpus,
                             _register_chat_corpus, _register_info):
        register_command(commands)


def _add_source_arguments(parser: argparse.ArgumentParser, default: list[str] | None) -> None:
    parser.add_argument("--source", nargs="+", default=default, required=default is None, metavar="SRC",
                        help=SOURCE_HELP)
    parser.add_argument("--doc_split", choices=("blank-line", "file"), default="blank-line",
                        help="plain-text files: a document per blank-line-separated paragraph, or per file "
                        "(default: blank-line)")
    parser.add_argument("--text_field", default="text",
                        help="field holding the text in JSONL / Parquet / Hugging Face sources (default: text)")
    parser.add_argument("--data_files", nargs="+", metavar="FILE", help="local files for an hf: source read with "
                        "a datasets builder, e.g. --source hf:json --data_files a.jsonl")
    parser.add_argument("--hf_split", default="train", help="split of hf: sources (default: train)")


def _register_prepare(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "prepare", _prepare, help="tokenize sources into train/val token shards (resumable)",
        description="Tokenize documents in parallel into train/val shards of uint16/uint32 tokens plus manifest.json. "
        "Every document ends with <|endoftext|>; its split is decided by a hash of its text. "
        "Rerunning the same command resumes an interrupted run.")
    _add_source_arguments(parser, default=None)
    parser.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder (from `gpt25 tokenizer train`)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the shards and manifest.json")
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val_docs", type=int, metavar="N",
                     help="the N documents with the smallest hashes go to validation (reads the sources twice)")
    val.add_argument("--val_fraction", type=float, metavar="F",
                     help="documents whose hash falls in the lowest fraction F go to validation (default: 0.01)")
    parser.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all available CPU cores)")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000, metavar="M",
                        help="tokens per shard (default: 100,000,000)")
    parser.add_argument("--force", action="store_true",
                        help="delete shards of a different earlier prepare in --out instead of refusing")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def _prepare(args: argparse.Namespace) -> None:
    from gpt25.data.prepare import PrepareConfig, available_cpus, prepare

    config = PrepareConfig(sources=args.source, tokenizer_dir=args.tokenizer, out_dir=args.out,
                           val_fraction=args.val_fraction, val_docs=args.val_docs,
                           workers=available_cpus() if args.workers is None else args.workers,
                           shard_tokens=args.shard_tokens, doc_split=args.doc_split, text_field=args.text_field,
                           data_files=args.data_files, hf_split=args.hf_split, overwrite=args.force,
                           progress=not args.no_progress)
    with one_line_warnings("data", every_time=True):
        manifest = prepare(config)
    print(_summary(args.out, manifest))


def _register_import_raw(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "import-raw", _import_raw, help="use headerless token files (the recipe's fineweb_train.bin / fineweb_test.bin) as a data folder",
        description="Check raw little-endian token files (size a whole number of tokens, every id below the "
        "tokenizer's vocab size) and write a data folder for `gpt25 train --data` whose manifest references "
        "them where they lie (or, with --copy, holds their tokens as ordinary shards). A referenced file that "
        "changes afterwards is refused.")
    parser.add_argument("--train", nargs="+", required=True, metavar="FILE", help="token files of the train split")
    parser.add_argument("--val", nargs="+", required=True, metavar="FILE", help="token files of the validation split")
    parser.add_argument("--tokenizer", required=True, metavar="DIR", help="the tokenizer the files were made with (e.g. GPT-2's)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for manifest.json (and shards with --copy)")
    parser.add_argument("--dtype", choices=("uint16", "uint32"), default="uint16", help="token type (default: uint16)")
    parser.add_argument("--copy", action="store_true", help="copy the tokens into shards instead of referencing the files")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000, metavar="M",
                        help="with --copy: tokens per shard (default: 100,000,000)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def _import_raw(args: argparse.Namespace) -> None:
    from gpt25.data.raw import RawImportConfig, import_raw

    config = RawImportConfig(train=args.train, val=args.val, tokenizer_dir=args.tokenizer, out_dir=args.out,
                             dtype=args.dtype, copy=args.copy, shard_tokens=args.shard_tokens, force=args.force,
                             progress=not args.no_progress)
    print(_summary(args.out, import_raw(config)))


def _summary(data_dir: str, manifest: dict) -> str:
    from gpt25.data.shards import is_raw_entry

    source = manifest["source"]
    lines = [f"{data_dir}: tokenizer {manifest['tokenizer_fingerprint'][:12]}, vocab {manifest['vocab_size']}, "
             f"{manifest['dtype']} tokens"]
    if source:
        lines.append(f"  source: {source['documents']:,} documents, {source['bytes']:,} bytes, "
                     f"{source['skipped_lines']} non-UTF-8 lines skipped")
    for split, info in manifest["splits"].items():
        num_referenced = sum(map(is_raw_entry, info["shards"]))
        files = f"{num_referenced} referenced token files" if num_referenced else f"{len(info['shards'])} shards"
        lines.append(f"  {split}: {info['tokens']:,} tokens, {info['documents']:,} documents, {files}")
    if not manifest["complete"]:
        lines.append("  incomplete: rerun the same `gpt25 data prepare` command to resume")
    return "\n".join(lines)


def _register_download(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "download", _download, help=f"download the recipe's published dataset or checkpoints ({RECIPE_REPO}) from the Hugging Face Hub",
        description="Download a Hugging Face Hub repo with huggingface_hub (needs the internet; with "
        "HF_HUB_OFFLINE=1 a cached copy is used).")
    parser.add_argument("--repo", default=RECIPE_REPO, help=f"Hub repo id (default: {RECIPE_REPO})")
    parser.add_argument("--repo_type", choices=("dataset", "model"), default="dataset",
                        help="dataset (token shards/text) or model (checkpoints) (default: dataset)")
    parser.add_argument("--out", metavar="DIR", help="copy the files into DIR (default: the Hugging Face cache)")
    parser.add_argument("--include", nargs="+", metavar="PATTERN", help="only files matching these globs")


def _download(args: argparse.Namespace) -> None:
    from gpt25.data.sources import download_repo

    print(download_repo(args.repo, args.repo_type, args.out, args.include))


def _register_corpus(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "corpus", _corpus, help="write documents (default: the embedded Python-docs corpus) as one text file for "
        "`gpt25 tokenizer train`", description="Write the documents of --source joined by <|endoftext|> into one UTF-8 file.")
    _add_source_arguments(parser, default=["python-docs"])
    parser.add_argument("--out", required=True, metavar="FILE", help="text file to write")


def _corpus(args: argparse.Namespace) -> None:
    from gpt25.data.default_corpus import write_corpus_file
    from gpt25.data.sources import check_sources, iter_documents

    check_sources(args.source, args.data_files)
    documents = iter_documents(args.source, doc_split=args.doc_split, text_field=args.text_field,
                               data_files=args.data_files, hf_split=args.hf_split)
    with one_line_warnings("data", every_time=True):
        num_documents, num_bytes = write_corpus_file(documents, args.out)
    if num_documents == 0:
        os.remove(args.out)
        raise ValueError(f"the sources {args.source} yielded no documents; check --source, --doc_split and --text_field")
    print(f"{args.out}: {num_documents:,} documents, {num_bytes:,} bytes of text")


def _register_chat_corpus(commands: argparse._SubParsersAction) -> None:
    parser = add_command(
        commands, "chat-corpus", _chat_corpus, help="write the embedded chat set (questions on the Python docs) as JSONL for `gpt25 sft`",
        description="Write the embedded chat set, conversations about the Python standard library built from "
        'its docstrings, one {"messages": [...]} object per line (smol-smoltalk\'s format).')
    parser.add_argument("--out", required=True, metavar="FILE.jsonl", help="JSONL file to write")
    parser.add_argument("--tokenizer", metavar="DIR", help="also count the tokens with this tokenizer (role "
                        "tokens added)")
    parser.add_argument("--val_fraction", type=float, default=0.05,
                        help="count the conversations `gpt25 sft` holds out at this share (default: 0.05)")


def _chat_corpus(args: argparse.Namespace) -> None:
    from gpt25.data.conversations import write_chat_set

    sizes = write_chat_set(args.out, args.tokenizer, args.val_fraction)
    tokens = f", {sizes['tokens']:,} tokens ({sizes['assistant_tokens']:,} trained)" if args.tokenizer else ""
    print(f"{args.out}: {sizes['conversations']:,} conversations ({sizes['validation']:,} held out at "
          f"--val_fraction {args.val_fraction:g}), {sizes['messages']:,} messages{tokens}")


def _register_info(commands: argparse._SubParsersAction) -> None:
    parser = add_command(commands, "info", _info, help="summarise a prepared data folder (and check its shards with --verify)",
                         description="Print the manifest summary of a `gpt25 data prepare` output folder.")
    parser.add_argument("data_dir", metavar="DIR")
    parser.add_argument("--verify", action="store_true", help="also check every shard's header, size and sha256")


def _info(args: argparse.Namespace) -> int:
    from gpt25.data.shards import read_manifest, verify_shards

    print(_summary(args.data_dir, read_manifest(args.data_dir)))
    if not args.verify:
        return 0
    problems = verify_shards(args.data_dir)
    for problem in problems:
        print(f"  bad: {problem}")
    print("  all shards verified" if not problems else f"  {len(problems)} bad shards")
    return 1 if problems else 0
