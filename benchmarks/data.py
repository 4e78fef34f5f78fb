"""Data pipeline speed: `prepare` with 1 and K workers vs tiktoken, and ShardLoader vs what the model eats.

One run, one table (figure, peer figure, ratio):
- prepare throughput (MB/s of UTF-8 text in, shards out) on ../shared/data/english/ with the GPT-2
  tokenizer, 1 worker and `--workers` workers (target: 2 workers >= 1.8x one), beside tiktoken
  (an Encoding with the same GPT-2 vocab/merges, built offline by Tokenizer.to_tiktoken) encoding
  the same documents with 1 and `--workers` threads; the token counts must agree exactly;
- the same on a larger input, the corpus listed `--large-copies` times (default 8, about 200 MB):
  the fixed costs (loading the tokenizer, starting the workers) weigh little there, as on real corpora;
- the same scaling over the tokenizing phase alone (the manifest's last_run.seconds: from the
  tokenizer loaded to the shards written), which leaves out the fixed cost of loading the tokenizer;
- the same documents written as one JSONL file of {"text": ...} records, 1 and `--workers` workers;
- the machine's own scaling: one pure-Python loop run in 1 process, then split over `--workers`
  forked processes (the best any process-parallel Python code can do on these cores);
- ShardLoader batches/s for batch 32 x context 1024 on those shards, beside the batches/s the
  124M model consumes on one GPU: its FLOPs per batch (TransformerLM.flops_per_token, built on the
  meta device) at an assumed `--gpu-tflops` (default 400: an H100 at ~40% MFU in bf16).

    uv run python benchmarks/data.py                    # whole english/ folder (~25 MB)
    uv run python benchmarks/data.py --limit-mb 5       # quicker
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gpt25.data.loader import ShardLoader
from gpt25.data.prepare import PrepareConfig, prepare
from gpt25.data.sources import expand_paths, iter_documents
from gpt25.tokenizer import Tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED_DATA / "english", help="folder of English text")
    parser.add_argument(
        "--gpt2-dir", type=Path, default=SHARED_DATA / "gpt2", help="folder with gpt2_vocab.json + gpt2_merges.txt"
    )
    parser.add_argument(
        "--limit-mb", type=float, default=None, help="use only the first files adding up to about this many MB"
    )
    parser.add_argument("--workers", type=int, default=2, help="the parallel run's worker count (compared with 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--context-length", type=int, default=1024)
    parser.add_argument("--loader-batches", type=int, default=200)
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each contender, alternating; the fastest counts"
    )
    parser.add_argument(
        "--gpu-tflops", type=float, default=400.0, help="assumed sustained model FLOP/s per GPU, in TFLOP/s"
    )
    parser.add_argument(
        "--large-copies", type=int, default=8, help="copies of the corpus in the larger-input rows (0: skip them)"
    )
    return parser.parse_args()


def pick_files(source: Path, limit_mb: float | None) -> list[str]:
    files, total = [], 0
    for path in expand_paths(str(source)):
        if limit_mb is not None and total >= limit_mb * 1e6:
            break
        files.append(str(path))
        total += path.stat().st_size
    return files


@dataclass
class Timing:
    """Best wall seconds, and of that run: CPU seconds summed over the main process and its workers,
    and the seconds `prepare` spent tokenizing (its manifest's last_run.seconds: after loading the tokenizer)."""

    wall: float = float("inf")
    cpu: float = float("inf")
    tokenizing: float = float("inf")

    def keep_best(self, wall: float, cpu: float, tokenizing: float | None = None) -> None:
        if wall < self.wall:
            self.wall, self.cpu, self.tokenizing = wall, cpu, wall if tokenizing is None else tokenizing


def cpu_seconds() -> float:
    """CPU time of this process plus its finished children (prepare joins its workers before it returns)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_prepare(files: list[str], tokenizer_dir: Path, out_dir: Path, workers: int, timing: Timing) -> dict:
    config = PrepareConfig(
        sources=files,
        tokenizer_dir=str(tokenizer_dir),
        out_dir=str(out_dir),
        workers=workers,
        val_fraction=0.01,
        progress=False,
        overwrite=True,
    )
    started, started_cpu = time.perf_counter(), cpu_seconds()
    manifest = prepare(config)
    timing.keep_best(time.perf_counter() - started, cpu_seconds() - started_cpu, manifest["last_run"]["seconds"])
    return manifest


def time_tiktoken(tokenizer: Tokenizer, documents: list[str], threads: int) -> tuple[float, int]:
    encoding = tokenizer.to_tiktoken()
    started = time.perf_counter()
    encoded = encoding.encode_ordinary_batch(documents, num_threads=threads)
    return time.perf_counter() - started, sum(map(len, encoded))


def _count_up(steps: int) -> int:
    total = 0
    for step in range(steps):
        total += step
    return total


def time_machine(workers: int, timing: Timing, total_steps: int = 40_000_000) -> None:
    """The same pure-Python loop split over `workers` forked processes: what this machine's cores give."""
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_count_up, [total_steps // workers] * workers)
    seconds = time.perf_counter() - started
    timing.keep_best(seconds, seconds)


def loader_batches_per_second(data_dir: Path, batch_size: int, context_length: int, num_batches: int) -> float:
    loader = ShardLoader(data_dir, "train", batch_size, context_length, seed=0)
    loader.next_batch()  # page the shard in
    started = time.perf_counter()
    for _ in range(num_batches):
        loader.next_batch()
    return num_batches / (time.perf_counter() - started)


def model_batches_per_second(batch_size: int, context_length: int, gpu_tflops: float) -> tuple[float, int]:
    """(batches/s the 124M model trains at on one GPU at `gpu_tflops`, its parameter count)."""
    import torch

    from gpt25.model import ModelConfig, TransformerLM

    config = ModelConfig(
        vocab_size=50304, context_length=context_length, d_model=768, num_layers=12, num_heads=12, d_ff=2048
    )
    model = TransformerLM(config, device=torch.device("meta"))
    flops_per_batch = model.flops_per_token() * batch_size * context_length
    return gpu_tflops * 1e12 / flops_per_batch, model.num_params()


def main() -> None:
    args = parse_args()
    if not (args.source.is_dir() and (args.gpt2_dir / "gpt2_vocab.json").is_file()):
        raise SystemExit(f"needs {args.source} and {args.gpt2_dir} (the shared data folder beside the checkout)")
    files = pick_files(args.source, args.limit_mb)
    tokenizer = Tokenizer.from_files(
        args.gpt2_dir / "gpt2_vocab.json", args.gpt2_dir / "gpt2_merges.txt", ["<|endoftext|>"]
    )
    documents = list(iter_documents(files))
    megabytes = sum(len(d.encode("utf-8")) for d in documents) / 1e6
    print(f"{len(files)} files, {len(documents):,} documents (blank-line paragraphs), {megabytes:.1f} MB of text")

    serial, parallel, tik_serial, tik_parallel = Timing(), Timing(), Timing(), Timing()
    machine_serial, machine_parallel = Timing(), Timing()
    large_serial, large_parallel = Timing(), Timing()
    jsonl_serial, jsonl_parallel = Timing(), Timing()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer.save(scratch / "tokenizer")
        jsonl = write_jsonl(scratch / "documents.jsonl", documents)
        for _ in range(args.repeats):  # alternate contenders so the shared machine's noise hits all alike
            manifest = time_prepare(files, scratch / "tokenizer", scratch / "one", 1, serial)
            manifest_k = time_prepare(files, scratch / "tokenizer", scratch / "many", args.workers, parallel)
            assert manifest_k["splits"] == manifest["splits"], "parallel prepare wrote different shards than serial"
            seconds, tik_tokens = time_tiktoken(tokenizer, documents, 1)
            tik_serial.keep_best(seconds, seconds)
            seconds, _ = time_tiktoken(tokenizer, documents, args.workers)
            tik_parallel.keep_best(seconds, seconds)
            time_machine(1, machine_serial)
            time_machine(args.workers, machine_parallel)
            if args.large_copies:
                large_files = files * args.large_copies
                time_prepare(large_files, scratch / "tokenizer", scratch / "large", 1, large_serial)
                time_prepare(large_files, scratch / "tokenizer", scratch / "large", args.workers, large_parallel)
            jsonl_manifest = time_prepare([jsonl], scratch / "tokenizer", scratch / "jsonl", 1, jsonl_serial)
            time_prepare([jsonl], scratch / "tokenizer", scratch / "jsonl", args.workers, jsonl_parallel)
            assert jsonl_manifest["splits"] == manifest["splits"], "the JSONL source gave other shards than the text"
        our_tokens = sum(manifest["splits"][s]["tokens"] for s in ("train", "val")) - len(documents)  # minus EOTs
        loader_rate = loader_batches_per_second(
            scratch / "one", args.batch_size, args.context_length, args.loader_batches
        )
    model_rate, num_params = model_batches_per_second(args.batch_size, args.context_length, args.gpu_tflops)

    workers = args.workers
    rows = [
        ("prepare MB/s, 1 worker", megabytes / serial.wall, "tiktoken MB/s, 1 thread", megabytes / tik_serial.wall),
        (
            f"prepare MB/s, {workers} workers",
            megabytes / parallel.wall,
            f"tiktoken MB/s, {workers} threads",
            megabytes / tik_parallel.wall,
        ),
        (
            f"prepare wall scaling {workers} vs 1 (target 1.8)",
            serial.wall / parallel.wall,
            f"tiktoken scaling {workers} vs 1 threads",
            tik_serial.wall / tik_parallel.wall,
        ),
        (
            f"prepare wall scaling {workers} vs 1",
            serial.wall / parallel.wall,
            f"machine: pure-Python loop, {workers} procs vs 1",
            machine_serial.wall / machine_parallel.wall,
        ),
        (
            f"prepare tokenizing-phase scaling {workers} vs 1",
            serial.tokenizing / parallel.tokenizing,
            f"machine: pure-Python loop, {workers} procs vs 1",
            machine_serial.wall / machine_parallel.wall,
        ),
        (
            f"prepare CPU-bound scaling bound, {workers} idle cores",
            workers * serial.cpu / parallel.cpu,
            "perfect split",
            workers,
        ),
        ("tokens (ours, EOTs excluded)", our_tokens, "tokens (tiktoken)", tik_tokens),
        *large_rows(args.large_copies, megabytes, workers, large_serial, large_parallel),
        (f"prepare MB/s, same documents as JSONL, {workers} workers", megabytes / jsonl_parallel.wall,
         "same, 1 worker", megabytes / jsonl_serial.wall),
        (
            f"ShardLoader batches/s ({args.batch_size}x{args.context_length}, CPU)",
            loader_rate,
            f"model consumes at {args.gpu_tflops:.0f} TFLOP/s",
            model_rate,
        ),
    ]
    print(
        f"\nmodel: the 124M config (12 layers, d_model 768, context {args.context_length}; {num_params / 1e6:.1f}M parameters with untied embeddings)"
    )
    print(
        f"prepare / tiktoken: fastest of {args.repeats} alternating runs; CPU-bound bound = {workers} x CPU s (1 worker) / CPU s ({workers} workers, all processes)\n"
    )
    print_table(rows)


def write_jsonl(path: Path, documents: list[str]) -> str:
    """The documents as JSONL records {"text": ...}: prepare's other byte-range source."""
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps({"text": document}) + "\n" for document in documents)
    return str(path)


def large_rows(copies: int, megabytes: float, workers: int, serial: Timing, parallel: Timing) -> list[tuple]:
    """The larger-input rows: MB/s with 1 and `workers` workers, and the scaling, on `copies` copies of the corpus."""
    if not copies:
        return []
    total = copies * megabytes
    return [
        (f"prepare MB/s, {total:.0f} MB ({copies} copies), {workers} workers", total / parallel.wall,
         "same, 1 worker", total / serial.wall),
        (f"same, tokenizing phase, {workers} workers", total / parallel.tokenizing,
         "same, 1 worker", total / serial.tokenizing),
    ]


def print_table(rows: list[tuple[str, float, str, float]]) -> None:
    print(f"| {'figure':<48} | {'value':>10} | {'peer figure':<40} | {'peer':>10} | {'ratio':>7} |")
    print(f"|{'-' * 50}|{'-' * 12}|{'-' * 42}|{'-' * 12}|{'-' * 9}|")
    for name, value, peer_name, peer in rows:
        print(f"| {name:<48} | {value:>10.2f} | {peer_name:<40} | {peer:>10.2f} | {value / peer:>7.2f} |")


if __name__ == "__main__":
    main()
