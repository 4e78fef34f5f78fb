"""CLI command `gpt25 sft`: fine-tune a base checkpoint on conversations into a chat model.

    gpt25 sft --checkpoint runs/small --tokenizer data/tokenizer --data python-docs-chat --out runs/chat
    gpt25 sft --config configs/sft-smoltalk.toml --checkpoint runs/base --tokenizer tok/ --out runs/chat
    gpt25 sft --checkpoint latest --out runs/chat --data python-docs-chat    # resume
"""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sft` to the `gpt25` parser."""
    from gpt25.train.config import SFTConfig, add_train_arguments

    parser = subparsers.add_parser(
        "sft", help="fine-tune a base checkpoint on conversations (loss on the assistant's tokens only)",
        description="Supervised fine-tuning: conversations packed into rows of --context_length, loss on the "
        "assistant's tokens only, held-out assistant loss and token accuracy every --eval_every steps. A "
        "tokenizer without role tokens gets them and the model the matching rows; the run saves that tokenizer "
        "as RUN_DIR/tokenizer. Settings: defaults, then --config FILE.toml, then flags; torchrun as `gpt25 train`.")
    add_train_arguments(parser, SFTConfig)
    parser.set_defaults(handler=run_sft)


def run_sft(args: argparse.Namespace) -> int:
    from gpt25.cli.train import stop_status
    from gpt25.train.config import SFTConfig, resolve_config
    from gpt25.train.sft import sft

    summary = sft(resolve_config(args, SFTConfig))
    if os.environ.get("RANK", "0") == "0" and summary["stopped_by"] is None:
        held_out = (f", held-out assistant loss {summary['final_val_loss']:.4f}, token accuracy "
                    f"{summary['val_accuracy']:.1%}" if summary["final_val_loss"] is not None else "")
        print(f"done: step {summary['step']} ({summary['epochs']:.2f} epochs), train loss "
              f"{summary['final_train_loss']:.4f}{held_out}; checkpoint {summary['checkpoint']}, "
              f"tokenizer {summary['tokenizer']}")
    return stop_status(summary["stopped_by"])
