"""Trainer overhead and multi-process throughput: the full `gpt25 train` loop vs the bare model step.

1. Overhead (one process, same run): the bare step (forward, cross_entropy, backward, AdamW step,
   zero_grad on a ready batch) vs the trainer's step loop (data loading, accumulation, clipping,
   LR schedule, loss all-reduce, NaN guard, logging, progress line). The trainer's cost per step is
   measured as the difference in wall time between two runs of N and 2N steps, so start-up, the
   final evaluation and the final checkpoint cancel out. Overhead target: < 5%.
2. `--ranks 2`: the same global batch on 2 CPU processes under torchrun, FSDP2 and DDP, vs one
   process (tokens/s from each run's metrics.jsonl).
3. `--device cuda --config configs/gpt25-124m.toml --steps 300`: a real GPU run of the recipe's model;
   reports tokens/s, MFU and peak memory (pass --data/--tokenizer for real shards).
4. `--sync-cost`: the step with the NaN guard's per-step host sync vs the same step with none
   (loss and grad norm read once at the end), interleaved; the cost in percent.

    uv run python benchmarks/train.py --threads 1                      # CPU overhead, small model
    uv run python benchmarks/train.py --ranks 2                        # + FSDP / DDP on 2 CPU processes
    uv run python benchmarks/train.py --device cuda --config configs/gpt25-124m.toml --steps 300 \
        --set grad_accum_steps=1 --skip-overhead
    uv run python benchmarks/train.py --device cuda --config configs/gpt25-124m.toml --set compile=on \
        --sync-cost --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, clip_grad_norm, cross_entropy
from gpt25.tokenizer import Tokenizer
from gpt25.train import TrainConfig, train
from gpt25.train.config import read_toml_settings
from gpt25.train.throughput import peak_flops
from gpt25.train.tracking import read_metrics

REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = dict(d_model=128, num_layers=2, num_heads=4, d_ff=352, context_length=128, batch_size=8)


def prepare_data(workdir: Path, vocab_size: int, num_chars: int) -> tuple[str, str]:
    """A BPE tokenizer and train/val shards from the embedded Python-docs corpus."""
    from gpt25.data.default_corpus import iter_default_corpus, write_corpus_file
    from gpt25.data.prepare import PrepareConfig, prepare
    from gpt25.tokenizer import train_bpe

    documents, size = [], 0
    for document in iter_default_corpus():
        documents.append(document)
        size += len(document)
        if size > num_chars:
            break
    write_corpus_file(documents, workdir / "corpus.txt")
    vocab, merges = train_bpe(workdir / "corpus.txt", vocab_size, ["<|endoftext|>"])
    Tokenizer(vocab, merges, ["<|endoftext|>"]).save(workdir / "tokenizer")
    prepare(PrepareConfig(sources=[str(workdir / "corpus.txt")], tokenizer_dir=str(workdir / "tokenizer"),
                          out_dir=str(workdir / "data"), val_fraction=0.05, progress=False))
    return str(workdir / "data"), str(workdir / "tokenizer")


def base_config(args: argparse.Namespace, data: str, tokenizer: str, out: Path) -> TrainConfig:
    settings = read_toml_settings(args.config) if args.config else dict(SMALL_MODEL)
    for assignment in args.set:
        name, value = assignment.split("=", 1)
        settings[name] = type(getattr(TrainConfig(), name))(value)
    settings |= dict(data=data, tokenizer=tokenizer, out=str(out), device=args.device, eval_every=0, eval_steps=1,
                     save_every=0, warmup_steps=1, log_every=10, checkpoint="", hellaswag="")
    return TrainConfig(**settings)


def bare_model(config: TrainConfig, vocab_size: int) -> tuple[TransformerLM, AdamW, torch.Tensor]:
    """The run's model (on its device), our AdamW and one random batch of (batch, context + 1) ids."""
    device = torch.device(config.device if config.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    model_config = ModelConfig(vocab_size=vocab_size, context_length=config.context_length, d_model=config.d_model,
                               num_layers=config.num_layers, num_heads=config.num_heads, d_ff=config.d_ff,
                               rope_theta=config.rope_theta)
    model = TransformerLM(model_config, device=device)
    optimizer = AdamW(parameter_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2))
    tokens = torch.randint(0, vocab_size, (config.batch_size, config.context_length + 1), device=device)
    return model, optimizer, tokens


def bare_step_seconds(config: TrainConfig, vocab_size: int, steps: int) -> float:
    """Median time of the model issue's bare training step on one ready micro-batch x accumulation."""
    model, optimizer, tokens = bare_model(config, vocab_size)
    autocast = torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")
    times = []
    for _ in range(steps + 2):
        started = time.perf_counter()
        for _ in range(config.grad_accum_steps):
            with autocast:
                loss = cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
            (loss / config.grad_accum_steps).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def sync_cost(config: TrainConfig, vocab_size: int, steps: int, repeats: int) -> dict:
    """Milliseconds per step with the NaN guard's per-step host sync (as `Trainer.train_step`) and without.

    Both run the trainer's step on a ready batch: forward (compiled when the config says so), backward,
    gradient clipping, AdamW. "synced" reads loss and grad norm to the host before every update, as the
    guard does; "asynchronous" reads them once, after the last step, so the host runs ahead of the GPU.
    """
    model, optimizer, tokens = bare_model(config, vocab_size)
    autocast = torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=config.dtype == "bfloat16")

    def model_loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(inputs), targets)

    compiled = config.compiles_on(tokens.device.type)
    compute_loss = torch.compile(model_loss) if compiled else model_loss

    def seconds_per_step(sync_every_step: bool, num_steps: int) -> float:
        synchronize(tokens.device)
        started = time.perf_counter()
        for _ in range(num_steps):
            with autocast:
                loss = compute_loss(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
            stats = torch.stack([loss.detach().float(), clip_grad_norm(model.parameters(), config.max_grad_norm)])
            if sync_every_step:
                stats.tolist()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        stats.tolist()
        synchronize(tokens.device)
        return (time.perf_counter() - started) / num_steps

    seconds_per_step(True, 3)  # warm-up: compilation, allocator, kernel selection
    seconds_per_step(False, 3)
    synced, asynchronous = [], []
    for _ in range(repeats):  # interleaved so machine noise hits both alike
        synced.append(seconds_per_step(True, steps))
        asynchronous.append(seconds_per_step(False, steps))
    synced_ms, asynchronous_ms = 1000 * statistics.median(synced), 1000 * statistics.median(asynchronous)
    return {"steps": steps, "repeats": repeats, "compile": compiled, "synced_ms": synced_ms,
            "asynchronous_ms": asynchronous_ms, "sync_cost_percent": 100 * (synced_ms / asynchronous_ms - 1)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_step_seconds(config: TrainConfig, steps: int, out: Path) -> tuple[float, dict]:
    """Median wall time between consecutive steps of train() (metrics rows' elapsed_s, log_every 1).

    Everything the loop does between two steps counts: data loading, accumulation, clipping,
    the loss all-reduce and NaN check, the metrics row and the progress line. Evaluation and the
    checkpoint come only after the last step, outside the measured gaps.
    """
    summary = train(TrainConfig(**(config.to_dict() | dict(train_steps=steps + 2, out=str(out), log_every=1))))
    elapsed = [row["elapsed_s"] for row in read_metrics(out) if "elapsed_s" in row]
    return statistics.median(later - earlier for earlier, later in zip(elapsed[1:-1], elapsed[2:], strict=True)), summary


def overhead(args: argparse.Namespace, data: str, tokenizer: str, workdir: Path) -> dict:
    config = base_config(args, data, tokenizer, workdir)
    vocab_size = Tokenizer.load(tokenizer).vocab_size
    tokens_per_step = config.batch_size * config.grad_accum_steps * config.context_length
    bare, trainer = [], []
    for repeat in range(args.repeats):  # interleaved so machine noise hits both alike
        bare.append(bare_step_seconds(config, vocab_size, args.steps))
        seconds, summary = trainer_step_seconds(config, args.steps, workdir / f"repeat{repeat}")
        trainer.append(seconds)
    bare_seconds, trainer_seconds = statistics.median(bare), statistics.median(trainer)
    run_config = json.loads(Path(summary["config"]).read_text())
    flops_per_token = run_config["derived"]["flops_per_token"]
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    peak, source = peak_flops(torch.device(run_config["device"]), dtype)
    return {"tokens_per_step": tokens_per_step, "bare_tokens_per_second": tokens_per_step / bare_seconds,
            "trainer_tokens_per_second": tokens_per_step / trainer_seconds,
            "bare_mfu": flops_per_token * tokens_per_step / bare_seconds / peak,
            "trainer_mfu": flops_per_token * tokens_per_step / trainer_seconds / peak,
            "overhead_percent": 100 * (trainer_seconds / bare_seconds - 1), "peak_source": source,
            "memory_gb": summary["memory_gb"], "final_train_loss": summary["final_train_loss"]}


def launch(config: TrainConfig, ranks: int, parallel: str, out: Path) -> float:
    """Median tokens/s of a `gpt25 train` run of `ranks` processes (global batch kept equal)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    flags = {**config.to_dict(), "out": str(out), "parallel": parallel, "log_every": 1,
             "batch_size": config.batch_size // ranks}
    argv = [item for name, value in flags.items() if value not in ("", False)
            for item in ([f"--{name}"] if value is True else [f"--{name}", str(value)])]
    command = (launcher if ranks > 1 else [sys.executable]) + ["-m", "gpt25", "train", *argv]
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    subprocess.run(command, check=True, capture_output=True, env=env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [row["tokens_per_second"] for row in rows if "tokens_per_second" in row][2:]
    return statistics.median(rates)


def multi_process(args: argparse.Namespace, data: str, tokenizer: str, workdir: Path) -> dict:
    config = TrainConfig(**(base_config(args, data, tokenizer, workdir).to_dict() | {"train_steps": args.steps}))
    if config.batch_size % args.ranks:
        raise ValueError(f"batch_size {config.batch_size} must divide by --ranks {args.ranks}")
    results = {"1 process": launch(config, 1, "none", workdir / "one")}
    for parallel in ("fsdp", "ddp"):
        results[f"{args.ranks} x {parallel}"] = launch(config, args.ranks, parallel, workdir / parallel)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML config (default: a small CPU model)")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="override config settings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=0, help="also compare FSDP / DDP on this many CPU processes")
    parser.add_argument("--skip-overhead", action="store_true", help="only the multi-process comparison / GPU run")
    parser.add_argument("--sync-cost", action="store_true",
                        help="only time the step with and without the NaN guard's per-step host sync (for GPUs)")
    parser.add_argument("--data", help="prepared shards (default: built from the embedded corpus)")
    parser.add_argument("--tokenizer", help="tokenizer dir matching --data")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocab when building data")
    return parser.parse_args()


def gpu_run(args: argparse.Namespace, data: str, tokenizer: str, workdir: Path) -> dict:
    config = TrainConfig(**(base_config(args, data, tokenizer, workdir).to_dict() | {"train_steps": args.steps}))
    summary = train(config)
    return {key: summary[key] for key in ("tokens_per_second", "mfu", "memory_gb", "final_train_loss", "num_params")}


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        data, tokenizer = (args.data, args.tokenizer) if args.data else prepare_data(workdir, args.vocab_size, 1_000_000)
        report = {"device": args.device, "torch_threads": torch.get_num_threads(), "config": args.config or SMALL_MODEL}
        if args.sync_cost:
            config = base_config(args, data, tokenizer, workdir)
            report["sync_cost"] = sync_cost(config, Tokenizer.load(tokenizer).vocab_size, args.steps, args.repeats)
        elif not args.skip_overhead:
            report["overhead"] = overhead(args, data, tokenizer, workdir)
        elif args.device != "cpu":
            report["gpu_run"] = gpu_run(args, data, tokenizer, workdir)
        if args.ranks > 1:
            report["tokens_per_second_by_layout"] = multi_process(args, data, tokenizer, workdir)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
