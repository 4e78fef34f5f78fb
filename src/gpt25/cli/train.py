"""`gpt25 train`, `gpt25 sft` (fine-tune a base checkpoint into a chat model) and `gpt25 plot`.
Manual: docs/training.md, docs/chat.md."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from gpt25.cli.flags import add_command
from gpt25.train.config import SFTConfig, add_train_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    train_parser = add_command(
        subparsers, "train", run_train, help="train (or resume) a model on prepared shards",
        description="Train a GPT 2.5 model on shards from `gpt25 data prepare`. Settings come from the "
        "defaults, then --config FILE.toml, then flags. Under torchrun the model is sharded with FSDP2 "
        "(or DDP); global batch = batch_size x grad_accum_steps x world size.")
    add_train_arguments(train_parser)
    plot_parser = add_command(subparsers, "plot", run_plot,
                              help="draw training curves of one or more runs as a PNG (or PDF, SVG)",
                              description="Loss, perplexity, LR, throughput, bits per byte and "
                              "HellaSwag from each RUN_DIR/metrics.jsonl, runs overlaid.")
    plot_parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to overlay")
    plot_parser.add_argument("--out", default=None, help="image to write, .png, .pdf or .svg (default: FIRST_RUN_DIR/curves.png)")
    sft_parser = add_command(
        subparsers, "sft", run_sft,
        help="fine-tune a base checkpoint on conversations (loss on the assistant's tokens only)",
        description="Supervised fine-tuning: conversations packed into rows of --context_length, loss on the "
        "assistant's tokens only, held-out assistant loss and token accuracy every --eval_every steps. A "
        "tokenizer without role tokens gets them and the model the matching rows; the run saves that tokenizer "
        "as RUN_DIR/tokenizer. Settings: defaults, then --config FILE.toml, then flags; torchrun as `gpt25 train`.")
    add_train_arguments(sft_parser, SFTConfig)


def run_train(args: argparse.Namespace) -> int:
    from gpt25.train.config import resolve_config
    from gpt25.train.trainer import train

    summary = train(resolve_config(args))
    if os.environ.get("RANK", "0") == "0" and summary["stopped_by"] is None and summary["final_val_loss"] is not None:
        print(f"done: step {summary['step']}, train loss {summary['final_train_loss']:.4f}, "
              f"val loss {summary['final_val_loss']:.4f}, checkpoint {summary['checkpoint']}")
    return stop_status(summary["stopped_by"])


def run_sft(args: argparse.Namespace) -> int:
    from gpt25.train.config import resolve_config
    from gpt25.train.sft import sft

    summary = sft(resolve_config(args, SFTConfig))
    if os.environ.get("RANK", "0") == "0" and summary["stopped_by"] is None:
        held_out = (f", held-out assistant loss {summary['final_val_loss']:.4f}, token accuracy "
                    f"{summary['val_accuracy']:.1%}" if summary["final_val_loss"] is not None else "")
        print(f"done: step {summary['step']} ({summary['epochs']:.2f} epochs), train loss "
              f"{summary['final_train_loss']:.4f}{held_out}; checkpoint {summary['checkpoint']}, "
              f"tokenizer {summary['tokenizer']}")
    return stop_status(summary["stopped_by"])


def stop_status(stopped_by: str | None) -> int:
    """0 for a finished run, else 128 + the signal's number (130 SIGINT; 143 SIGTERM, also for a rank stopped
    by another's signal), as a shell reports a killed command: `gpt25 train ... && gpt25 eval ...` stops there."""
    if stopped_by is None:
        return 0
    return 128 + signal.Signals.__members__.get(stopped_by, signal.SIGTERM)


def run_plot(args: argparse.Namespace) -> None:
    from gpt25.train.plot import plot_runs

    out = args.out or str(Path(args.run_dirs[0]) / "curves.png")
    print(plot_runs(args.run_dirs, out))
