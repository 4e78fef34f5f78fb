"""The serving engine without HTTP: `gpt25.serve.engine.Engine` vs the same requests one at a time.

A random-weight model (`--config`, the sizes of benchmarks/generate.py) and, for 1, 8 and 32
concurrent requests, one thread per request submitting a greedy `Request` (random prompt ids of
8-32 tokens, a fixed seed each, exactly `--max-tokens` new tokens, no stop ids) to one running
Engine, against the same prompts one after another through `gpt25.engine.generate_tokens` (the
cached generation; on CUDA its graph-replayed decoding step). Aggregate tokens/s = all generated
tokens / wall time of the level. "same" means every request's tokens in the batch equal its tokens
alone. Imports torch and gpt25 only (no fastapi, uvicorn or httpx), so it runs on the GPU machine.

    uv run python benchmarks/engine.py --config tiny --device cpu
    python3 benchmarks/engine.py --config 124m --device cuda --dtype bf16 --json engine.json
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch
from generate import CONFIGS, DTYPES, synchronize

from gpt25.engine import generate_tokens
from gpt25.model import TransformerLM
from gpt25.serve.engine import Engine, Request


def random_prompts(count: int, vocab_size: int) -> list[list[int]]:
    """`count` prompts of 8-32 random token ids, the same on every run."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 33, (count,), generator=generator).tolist()
    return [torch.randint(0, vocab_size, (length,), generator=generator).tolist() for length in lengths]


def engine_level(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    """(seconds, each request's tokens): one thread per prompt submits a greedy request and waits for it."""
    finished = [threading.Event() for _ in prompts]
    requests = [Request(prompt, max_tokens, lambda kind, _value, done=done: kind == "done" and done.set(),
                        temperature=0.0, seed=index)
                for index, (prompt, done) in enumerate(zip(prompts, finished, strict=True))]

    def client(index: int) -> None:
        engine.submit(requests[index])
        finished[index].wait()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(requests))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if any(request.finish_reason != "length" for request in requests):
        raise RuntimeError(f"the engine ended requests early: {[request.finish_reason for request in requests]}")
    return seconds, [request.completion_ids for request in requests]


def one_at_a_time(model: TransformerLM, prompts: list[list[int]], max_tokens: int) -> tuple[float, list[list[int]]]:
    """(seconds, each prompt's tokens): the prompts one after another through the cached generation."""
    device = next(model.parameters()).device
    outputs = []
    synchronize(device)
    start = time.perf_counter()
    for prompt in prompts:
        prompt_ids = torch.tensor([prompt], device=device)  # (1, prompt_len)
        outputs.append(generate_tokens(model, prompt_ids, max_new_tokens=max_tokens)[0].tolist())
    synchronize(device)
    return time.perf_counter() - start, outputs


def benchmark(args: argparse.Namespace) -> list[dict]:
    """One row per concurrency level: both sides' tokens/s and whether the batch's tokens equal alone's."""
    torch.manual_seed(0)
    config = CONFIGS[args.config]
    model = TransformerLM(config, device=torch.device(args.device), dtype=DTYPES[args.dtype]).eval()
    levels = [int(level) for level in args.concurrency.split(",")]
    prompts = random_prompts(max(levels), config.vocab_size)
    token_bytes = {token: bytes([97 + token % 26]) for token in range(config.vocab_size)}
    engine = Engine(model, token_bytes, config.vocab_size, max_batch=max(levels), max_queue=max(levels)).start()
    try:
        engine_level(engine, prompts[:2], args.max_tokens)  # warm-up: allocator, kernels, lazy init
        one_at_a_time(model, prompts[:1], args.max_tokens)
        rows = []
        for level in levels:
            engine_seconds, batched = engine_level(engine, prompts[:level], args.max_tokens)
            alone_seconds, alone = one_at_a_time(model, prompts[:level], args.max_tokens)
            tokens = level * args.max_tokens
            rows.append({"concurrency": level, "engine_tokens_per_second": tokens / engine_seconds,
                         "one_at_a_time_tokens_per_second": tokens / alone_seconds,
                         "ratio": alone_seconds / engine_seconds, "same": batched == alone})
            print(format_row(rows[-1], args), flush=True)
    finally:
        engine.stop()
    return rows


def format_row(row: dict, args: argparse.Namespace) -> str:
    cells = [args.config, args.device, args.dtype, str(row["concurrency"]), str(args.max_tokens),
             f"{row['engine_tokens_per_second']:,.0f}", f"{row['one_at_a_time_tokens_per_second']:,.0f}",
             f"{row['ratio']:.2f}x", "same" if row["same"] else "differ"]
    return "| " + " | ".join(cells) + " |"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="model size (random weights)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and cache dtype")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated concurrent requests per level")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request (default 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| config | device | dtype | concurrent requests | tokens each | engine tok/s | one at a time tok/s | "
          "engine / one at a time | greedy: batch vs alone |")
    print("|" + "---|" * 9)
    rows = benchmark(args)
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "device": args.device, "dtype": args.dtype,
                                         "max_tokens": args.max_tokens, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
