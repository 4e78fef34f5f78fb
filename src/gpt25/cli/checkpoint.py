"""`gpt25 checkpoint import|info|consolidate`: bring checkpoints in, inspect them, gather FSDP shards.
Manual: docs/import.md, docs/training.md (Checkpoint format)."""

from __future__ import annotations

import argparse
import json

from gpt25.cli.flags import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoint", help="import, inspect or consolidate checkpoints",
                                   description="Import other projects' checkpoints; inspect or consolidate "
                                   "gpt25 training checkpoints.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    importer = add_command(
        actions, "import", run_import, help="convert another project's checkpoint into a gpt25 checkpoint directory",
        description="Detect SRC's layout (the GPT 2.5 seed's DCP folder, its Hugging Face folder, or a "
        "transformers Llama or GPT-2 folder) and write a gpt25 checkpoint directory, with its tokenizer in "
        "DIR/tokenizer, that eval, generate, export hf and train --checkpoint take.")
    importer.add_argument("src", metavar="SRC", help="checkpoint folder to import")
    importer.add_argument("--out", required=True, metavar="DIR", help="gpt25 checkpoint directory to write")
    importer.add_argument("--tokenizer", default=None, metavar="TOK",
                          help="gpt25 tokenizer folder (GPT-2's from `gpt25 tokenizer import`); default: SRC's "
                          "own vocab.json + merges.txt; the chat role tokens are added when the model has 3 more rows")
    importer.add_argument("--force", action="store_true", help="replace DIR if it exists")
    importer.add_argument("--num_heads", type=int, default=None,
                          help="attention heads, for a source that does not record them (default for the seed's "
                          "DCP folder: d_model / 64)")
    importer.add_argument("--context_length", type=int, default=None,
                          help="context length, for a source that does not record it (default: 1024)")
    importer.add_argument("--rope_theta", type=float, default=None,
                          help="RoPE base, for a source that does not record it (default: 10000)")
    info_parser = add_command(actions, "info", run_info, help="print a checkpoint's metadata",
                              description="Print the step, model config, tokenizer, layout and origin of a checkpoint.")
    info_parser.add_argument("path", help="step dir, run dir, imported dir or consolidated .safetensors file")
    consolidate_parser = add_command(
        actions, "consolidate", run_consolidate, help="write one safetensors file (+ .json sidecar) from any checkpoint",
        description="Gather a (possibly FSDP-sharded) checkpoint into one safetensors file of full weights, "
        "with its metadata in a <name>.json sidecar; `gpt25 eval/sample/export` accept the result.")
    consolidate_parser.add_argument("path", help="step dir or run dir (newest checkpoint)")
    consolidate_parser.add_argument("--out", required=True, help="output file, ending in .safetensors")


def run_import(args: argparse.Namespace) -> None:
    from gpt25.checkpoint_import import TOKENIZER_DIR, import_checkpoint

    settings = {"num_heads": args.num_heads, "context_length": args.context_length, "rope_theta": args.rope_theta}
    out, layout, meta = import_checkpoint(args.src, args.out, tokenizer_dir=args.tokenizer, force=args.force,
                                          settings=settings)
    tokenizer_note = f", tokenizer in {out / TOKENIZER_DIR}" if meta["tokenizer_fingerprint"] else \
        "; no tokenizer (pass --tokenizer to add one)"
    print(f"imported {args.src} ({layout.name}) at step {meta['step']} into {out}{tokenizer_note}")
    print(f"model: {json.dumps(meta['model_config'])}")


def run_info(args: argparse.Namespace) -> None:
    from gpt25.checkpoint import list_checkpoints, read_meta, resolve_checkpoint
    from gpt25.checkpoint_import import TOKENIZER_DIR

    path = resolve_checkpoint(args.path)
    meta = read_meta(path)
    others = [found.name for found in list_checkpoints(args.path)]  # none for a step dir or a file
    tokenizer_dir = path / TOKENIZER_DIR if path.is_dir() and (path / TOKENIZER_DIR).is_dir() else None
    imported = {"imported_from": meta["imported_from"], "source_settings": meta["train_config"]} \
        if meta.get("imported_from") else {}
    print(json.dumps({"path": str(path), **{key: meta[key] for key in
                      ("step", "world_size", "sharded", "tokenizer_fingerprint", "model_config")},
                      "tokenizer": str(tokenizer_dir) if tokenizer_dir else None, **imported,
                      "checkpoints_in_run": others}, indent=2))


def run_consolidate(args: argparse.Namespace) -> None:
    from gpt25.checkpoint import consolidate

    print(consolidate(args.path, args.out))
