"""`gpt25 demo`: the main job, end to end on the embedded corpus (see gpt25.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt25.cli.flags import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "demo", run,
        help="run the whole pipeline on the embedded Python-docs corpus, then fine-tune a chat model (CPU; --minutes sets the pretraining budget)",
        description="Build the embedded corpus, train a BPE tokenizer, tokenize into shards, train a small "
        "model, evaluate it against a unigram baseline, sample, fine-tune it into a chat model on the embedded chat "
        "set, ask it a few questions, and write RUN_DIR/report.md + results.png. "
        "A second run reuses the corpus, tokenizer and shards (and a finished training run) unless --fresh.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="pretraining budget in minutes: the demo times a training step on this machine and trains "
                        "as many steps as fit (default: 5)")
    parser.add_argument("--train_steps", type=int, default=None,
                        help="train exactly this many steps instead of --minutes (the same tokens on any machine)")
    parser.add_argument("--sft_steps", type=int, default=None,
                        help="fine-tuning steps on the embedded chat set, 8 rows of 256 tokens each "
                        "(default: 0.4 x the pretraining steps, at least 20)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first and redo every stage")
    parser.add_argument("--vocab_size", type=int, default=4096, help="BPE vocabulary size (default: 4096)")
    parser.add_argument("--config", type=Path, default=None, help="training config TOML (default: configs/cpu-small.toml)")
    parser.add_argument("--arch", choices=("gpt25", "gpt2"), default="gpt25",
                        help="model architecture: gpt25 (the recipe) or gpt2 (the original GPT-2) (default: gpt25)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from gpt25.cli.train import stop_status
    from gpt25.demo import CPU_CONFIG, DemoConfig, run_demo

    settings = {name: value for name, value in vars(args).items() if name not in ("command", "handler")}
    results = run_demo(DemoConfig(**settings | {"config": args.config or CPU_CONFIG}))
    if "report" not in results:  # training or fine-tuning was stopped by a signal
        return stop_status(results["sft" if "sft" in results else "train"]["stopped_by"])
    print(f"\nreport: {results['report']['report']}\nplot:   {results['report']['plot']}")
    return 0
