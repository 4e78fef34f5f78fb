"""Generation speed: gpt25.engine with and without the KV cache vs transformers' generate(), one run.

For each config (tiny, 124m) and batch size (1, 8), the same weights run three ways, greedy, for
exactly `--new-tokens` tokens after a random `--prompt-tokens` prompt (no end-of-text stop on either
side, so the work is identical):

- gpt25 cached:    gpt25.engine.generate_tokens(use_cache=True)   (preallocated KV cache; on CUDA
                   a StaticKVCache whose one-token step is captured in a CUDA graph and replayed)
- gpt25 eager:     on CUDA only, generate_tokens(static_decode=False): the cached path without the graph
- gpt25 no cache:  gpt25.engine.generate_tokens(use_cache=False)  (recomputes the prefix each token)
- transformers:    LlamaForCausalLM.generate(do_sample=False, min_new_tokens=max_new_tokens=N)

The Llama model is our model exported with gpt25.interop.export_hf and loaded with
LlamaForCausalLM.from_pretrained; the greedy outputs are compared: "same" in the table means both
produced identical tokens. Repeats alternate between the three
contenders; the median time gives tokens/s (batch x new tokens / seconds).

    uv run python benchmarks/generate.py                          # CPU: tiny + 124m, batch 1 and 8
    uv run python benchmarks/generate.py --quick                  # tiny only, 50 tokens, 1 repeat
    uv run python benchmarks/generate.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gpt25.engine import generate_tokens
from gpt25.interop import export_hf
from gpt25.model import ModelConfig, TransformerLM

CONFIGS = {
    "tiny": ModelConfig(vocab_size=8192, context_length=256, d_model=256, num_layers=4, num_heads=4, d_ff=704),
    "124m": ModelConfig(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_llama(model: TransformerLM, folder: Path):
    """transformers' LlamaForCausalLM loaded from `gpt25.interop.export_hf(model)`: the same weights."""
    from transformers import LlamaForCausalLM

    parameter = next(model.parameters())
    export_hf(model, None, folder, dtype=parameter.dtype, overwrite=True)
    llama = LlamaForCausalLM.from_pretrained(folder, dtype=parameter.dtype, attn_implementation="sdpa")
    return llama.to(parameter.device).eval()


def contenders(model: TransformerLM, llama, new_tokens: int, no_cache: bool) -> dict[str, Callable]:
    """name -> function(prompt (batch, prompt_len)) -> new tokens (batch, new_tokens)."""
    def ours(use_cache: bool, static_decode: bool | None = None) -> Callable:
        return lambda prompt: generate_tokens(
            model, prompt, max_new_tokens=new_tokens, use_cache=use_cache, static_decode=static_decode
        )

    @torch.inference_mode()
    def transformers_generate(prompt: torch.Tensor) -> torch.Tensor:
        output = llama.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
        )
        return output[:, prompt.shape[1] :]

    found = {"gpt25 cached": ours(True), "transformers": transformers_generate}
    if next(model.parameters()).device.type == "cuda":
        found["gpt25 eager"] = ours(True, static_decode=False)
    if no_cache:
        found["gpt25 no cache"] = ours(False)
    return found


def timed(function: Callable, prompt: torch.Tensor) -> tuple[float, torch.Tensor]:
    synchronize(prompt.device)
    start = time.perf_counter()
    output = function(prompt)
    synchronize(prompt.device)
    return time.perf_counter() - start, output


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(name: str, batch_size: int, args: argparse.Namespace) -> dict:
    """Median tokens/s of each contender for one config and batch size."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = TransformerLM(CONFIGS[name], device=device, dtype=DTYPES[args.dtype]).eval()
    with tempfile.TemporaryDirectory() as folder:
        llama = build_llama(model, Path(folder) / "hf")
    prompt = torch.randint(0, CONFIGS[name].vocab_size, (batch_size, args.prompt_tokens), device=device)
    runs = contenders(model, llama, args.new_tokens, not args.skip_no_cache)
    for function in runs.values():  # warm-up: allocator, kernels, lazy init
        timed(function, prompt[:, : args.prompt_tokens])
    seconds = {label: [] for label in runs}
    outputs = {}
    for _ in range(args.repeats):
        for label, function in runs.items():
            elapsed, outputs[label] = timed(function, prompt)
            seconds[label].append(elapsed)
    tokens = batch_size * args.new_tokens
    speeds = {label: tokens / statistics.median(times) for label, times in seconds.items()}
    return {
        "config": name, "batch": batch_size, "speeds": speeds,
        "same": torch.equal(outputs["gpt25 cached"], outputs["transformers"]),
        "cache_matches_no_cache": "gpt25 no cache" not in outputs
        or torch.equal(outputs["gpt25 cached"], outputs["gpt25 no cache"]),
        "graph_matches_eager": "gpt25 eager" not in outputs
        or torch.equal(outputs["gpt25 cached"], outputs["gpt25 eager"]),
    }


def format_row(result: dict, args: argparse.Namespace) -> str:
    speeds = result["speeds"]
    cached, hf = speeds["gpt25 cached"], speeds["transformers"]
    no_cache, eager = speeds.get("gpt25 no cache"), speeds.get("gpt25 eager")
    cells = [
        result["config"], args.device, args.dtype, str(result["batch"]), str(args.new_tokens), f"{cached:,.0f}",
        "-" if eager is None else f"{eager:,.0f}", "-" if no_cache is None else f"{no_cache:,.0f}", f"{hf:,.0f}",
        f"{cached / hf:.2f}x", "-" if no_cache is None else f"{cached / no_cache:.1f}x",
        "same" if result["same"] else "differ", "same" if result["cache_matches_no_cache"] else "differ",
        "-" if eager is None else ("same" if result["graph_matches_eager"] else "differ"),
    ]
    return "| " + " | ".join(cells) + " |"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="tiny,124m", help="comma-separated: tiny,124m")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens generated per row (default 200)")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="random prompt length (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender; the median counts")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and cache dtype")
    parser.add_argument("--skip-no-cache", action="store_true", help="leave out the (slow) no-cache path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny config, 50 new tokens, 1 repeat")
    parser.add_argument("--json", type=Path, help="also write the rows (tokens/s per contender) to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.configs, args.new_tokens, args.repeats = "tiny", 50, 1
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| config | device | dtype | batch | new tokens | gpt25 cached tok/s | gpt25 eager tok/s | "
          "gpt25 no-cache tok/s | transformers tok/s | cached / transformers | cached / no-cache | "
          "vs transformers | cache vs no-cache | graph vs eager |")
    print("|" + "---|" * 14)
    results = []
    for name in args.configs.split(","):
        for batch_size in (int(size) for size in args.batch_sizes.split(",")):
            results.append(benchmark(name, batch_size, args))
            print(format_row(results[-1], args), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "dtype": args.dtype, "new_tokens": args.new_tokens,
                                         "rows": results}, indent=2))


if __name__ == "__main__":
    main()
