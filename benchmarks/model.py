"""Training-step throughput of gpt25's TransformerLM + AdamW vs transformers' LlamaForCausalLM + torch AdamW.

One table, one run: for each config (tiny, 124m) and precision (fp32, bf16 autocast) both models
(identical architecture: RMSNorm eps 1e-5, SwiGLU, RoPE, no biases, untied head) run a full
training step (forward, loss, backward, AdamW step, zero_grad). Steps alternate between the two
models so machine noise hits both alike; the median step time gives tokens/s. MFU divides
model FLOPs (TransformerLM.flops_per_token: 6N + attention) by a measured matmul ceiling.

    uv run python benchmarks/model.py                              # CPU, both configs, fp32 + bf16
    uv run python benchmarks/model.py --configs tiny --steps 5     # quick
    uv run python benchmarks/model.py --threads 1 --timer cpu      # steadier on a shared CPU box
    uv run python benchmarks/model.py --device cuda --compile --configs 124m --dtypes bf16 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, cross_entropy

CONFIGS = {
    "tiny": (ModelConfig(vocab_size=8192, context_length=256, d_model=256, num_layers=4, num_heads=4, d_ff=704), 8),
    "124m": (
        ModelConfig(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048),
        1,
    ),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# "cpu" (process CPU time) is steadier than wall time on a shared CPU machine, with --threads 1.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
LEARNING_RATE, WEIGHT_DECAY, BETAS = 3e-4, 0.1, (0.9, 0.95)


@dataclass
class Contender:
    """One model + optimizer + how to get its loss from (inputs, targets)."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_ours(config: ModelConfig, device: torch.device, compile_model: bool) -> Contender:
    model = TransformerLM(config, device=device)
    optimizer = AdamW(parameter_groups(model, WEIGHT_DECAY), lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY)

    def loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(model(inputs), targets)

    # Compiled together with the loss, as transformers' forward(labels=...) compiles its own loss.
    return Contender("gpt25", model, optimizer, torch.compile(loss) if compile_model else loss)


def build_transformers(config: ModelConfig, device: torch.device, compile_model: bool) -> Contender:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.d_ff,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.context_length,
        rms_norm_eps=1e-5,
        rope_theta=config.rope_theta,
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
    )
    model = LlamaForCausalLM(hf_config).to(device)
    assert model.config._attn_implementation == "sdpa", "compare against transformers' SDPA attention"
    # Same decay split as ours: no decay on norms and embeddings.
    decay = [p for name, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in name]
    no_decay = [p for name, p in model.named_parameters() if p.dim() != 2 or "embed_tokens" in name]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS)
    forward = torch.compile(model) if compile_model else model

    def loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return forward(input_ids=inputs, labels=inputs).loss  # transformers shifts labels itself

    return Contender("transformers", model, optimizer, loss)


def train_step(contender: Contender, inputs: torch.Tensor, targets: torch.Tensor, autocast_dtype, clock=time.perf_counter) -> float:
    """One timed forward + backward + optimizer step; returns seconds of `clock`."""
    device = inputs.device
    synchronize(device)
    start = clock()
    with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        loss = contender.loss(inputs, targets)
    loss.backward()
    contender.optimizer.step()
    contender.optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return clock() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, clock=time.perf_counter, repeats: int = 5) -> float:
    """Best FLOP/s of a large square matmul (after one warm-up): the practical peak MFU is measured against."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, clock() - start)
    return 2 * size**3 / best


def measure_ceilings(device: torch.device, dtype_names: list[str], clock, previous: dict | None = None) -> dict:
    """Matmul ceiling per precision; with `previous`, the better of both (a busy machine only lowers it)."""
    dtypes = {name: torch.float32 if name == "fp32" else torch.bfloat16 for name in dtype_names}
    ceilings = {name: matmul_ceiling(device, dtype, clock) for name, dtype in dtypes.items()}
    return {name: max(value, (previous or {}).get(name, 0.0)) for name, value in ceilings.items()}


def run_row(name: str, dtype_name: str, args: argparse.Namespace) -> dict:
    """Benchmark both contenders on one (config, precision) row."""
    config, default_batch = CONFIGS[name]
    batch_size = args.batch_size or default_batch
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    contenders = [build_ours(config, device, args.compile), build_transformers(config, device, args.compile)]
    ids = torch.randint(0, config.vocab_size, (batch_size, config.context_length + 1), device=device)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    autocast_dtype = DTYPES[dtype_name]
    times: dict[str, list[float]] = {contender.name: [] for contender in contenders}
    total = args.warmup + args.steps
    for step in tqdm(range(total), desc=f"{name} {dtype_name}", leave=False):
        for contender in contenders if step % 2 == 0 else reversed(contenders):
            seconds = train_step(contender, inputs, targets, autocast_dtype, CLOCKS[args.timer])
            if step >= args.warmup:
                times[contender.name].append(seconds)
    tokens_per_step = batch_size * config.context_length
    row = {"config": name, "dtype": dtype_name, "batch": batch_size, "flops_per_token": contenders[0].model.flops_per_token()}
    for contender in contenders:
        row[contender.name] = tokens_per_step / statistics.median(times[contender.name])
    row["ratio"] = row["gpt25"] / row["transformers"]
    tqdm.write(f"{name} {dtype_name}: gpt25 {row['gpt25']:,.0f} tok/s, transformers {row['transformers']:,.0f} tok/s")
    return row


def print_table(rows: list[dict], args: argparse.Namespace, ceilings: dict) -> None:
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    ceiling_text = ", ".join(f"{name} {value / 1e9:,.1f} GFLOP/s" for name, value in ceilings.items())
    print(f"\ndevice: {device_name}; torch {torch.__version__}; compile={args.compile}; timer={args.timer}; "
          f"median of {args.steps} steps after {args.warmup} warmup; matmul ceiling: {ceiling_text}\n")
    print("| config | precision | batch | gpt25 tok/s | transformers tok/s | gpt25 / transformers | gpt25 MFU | transformers MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['dtype']} | {row['batch']} | {row['gpt25']:,.0f} | {row['transformers']:,.0f} "
              f"| {row['ratio']:.2f}x | {row['gpt25_mfu']:.1%} | {row['transformers_mfu']:.1%} |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,124m", help="comma list of: " + ", ".join(CONFIGS))
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma list of: fp32 (no autocast), bf16 (autocast)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile needs >= 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--batch-size", type=int, default=None, help="override every config's batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)")
    parser.add_argument("--timer", choices=tuple(CLOCKS), default="wall",
                        help="wall clock, or process CPU time (tokens per CPU-second; for a busy CPU machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows and ceilings to this JSON file")
    args = parser.parse_args()
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    for name in args.dtypes.split(","):
        if name not in DTYPES:
            parser.error(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_names = args.dtypes.split(",")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows really are fp32 for both models
    clock = CLOCKS[args.timer]
    ceilings = measure_ceilings(device, dtype_names, clock)
    rows = [run_row(name, dtype_name, args) for name in args.configs.split(",") for dtype_name in dtype_names]
    ceilings = measure_ceilings(device, dtype_names, clock, ceilings)
    for row in rows:
        for contender in ("gpt25", "transformers"):
            row[f"{contender}_mfu"] = row["flops_per_token"] * row[contender] / ceilings[row["dtype"]]
    print_table(rows, args, ceilings)
    if args.json:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        args.json.write_text(json.dumps({"device": args.device, "device_name": device_name, "compile": args.compile,
                                         "ceilings": ceilings, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
