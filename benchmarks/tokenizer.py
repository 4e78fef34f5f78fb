"""Tokenizer benchmark: gpt25 vs Hugging Face `tokenizers`, tiktoken and (if installed) rustbpe.

    uv run python benchmarks/tokenizer.py            # everything (a few minutes; 1 GB stream included)
    uv run python benchmarks/tokenizer.py --quick    # vocab 8192 only, no 32000, 100 MB stream

Each measurement runs in a fresh subprocess, so times include no warm caches and peak memory
(ru_maxrss of the process and of its pool workers) belongs to that measurement alone. The
contenders of one row group run in turns (gpt25, peer, peer, gpt25, peer, ...), `--repeats` times
each (default 3), and each one's fastest run counts: on this noisy shared machine a slow spell
then falls on every contender alike. Training
uses 2 processes/threads for every library (RAYON_NUM_THREADS=2 for the Rust ones). Encoding
uses GPT-2's vocab on the same corpus; "2 proc" is gpt25's pool encoder vs tiktoken's 2 threads;
"without the C extension" is the pure-Python fallback (GPT25_PURE_PYTHON=1).
Prints one table; the ratio column is the other library's wall time divided by gpt25's
(> 1 means gpt25 is faster). "CPU s" adds up all processes and threads (worth reading on a busy
machine, where wall times are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GPT25_SHARED_DATA", REPO.parent / "shared" / "data"))
EOT = "<|endoftext|>"


def corpus_paths(data_dir: Path) -> list[Path]:
    paths = sorted((data_dir / "english").glob("*.txt"))
    if not paths:
        raise SystemExit(f"no corpus at {data_dir / 'english'} (set GPT25_SHARED_DATA)")
    return paths


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest finished child) peak resident memory in MB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


# ---- measurements (each runs in its own subprocess) -------------------------------------------
# Each task does its setup and returns the work to time, as a function of no arguments.


def train_gpt25(paths: list[Path], vocab_size: int):
    from gpt25.tokenizer import train_bpe

    return lambda: train_bpe(paths, vocab_size, [EOT], num_workers=2)


def hf_trainer_and_tokenizer(vocab_size: int):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from gpt25.tokenizer import GPT2_PATTERN

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tokenizer, trainer


def iter_lines(paths: list[Path]):
    for path in paths:
        with open(path, encoding="utf-8", newline="") as handle:
            yield from handle


def train_hf_files(paths: list[Path], vocab_size: int):
    tokenizer, trainer = hf_trainer_and_tokenizer(vocab_size)
    return lambda: tokenizer.train([str(path) for path in paths], trainer)


def train_hf_iterator(paths: list[Path], vocab_size: int):
    tokenizer, trainer = hf_trainer_and_tokenizer(vocab_size)
    return lambda: tokenizer.train_from_iterator(iter_lines(paths), trainer)


def train_rustbpe(paths: list[Path], vocab_size: int):
    try:
        import rustbpe
    except ImportError:
        raise SystemExit("rustbpe is not installed (it is on PyPI: pip install rustbpe)") from None

    from gpt25.tokenizer import GPT2_PATTERN

    return lambda: rustbpe.Tokenizer().train_from_iterator(iter_lines(paths), vocab_size, pattern=GPT2_PATTERN)


def train_small(paths: list[Path], vocab_size: int):
    from gpt25.tokenizer import train_bpe

    return lambda: train_bpe(SHARED_DATA / "fixtures" / "corpus.en", vocab_size, [EOT])


def gpt2_tokenizer():
    from gpt25.tokenizer import Tokenizer

    return Tokenizer.from_files(SHARED_DATA / "gpt2" / "gpt2_vocab.json", SHARED_DATA / "gpt2" / "gpt2_merges.txt", [EOT])


def read_texts(paths: list[Path]) -> list[str]:
    return [path.read_bytes().decode("utf-8") for path in paths]


def encode_all(encode, texts: list[str]):
    def work() -> None:
        for text in texts:
            encode(text)

    return work


def encode_gpt25(paths: list[Path], _: int):
    return encode_all(gpt2_tokenizer().encode, read_texts(paths))


def encode_gpt25_pure_python(paths: list[Path], _: int):
    """What runs where the C extension could not be built."""
    os.environ["GPT25_PURE_PYTHON"] = "1"
    return encode_gpt25(paths, 0)


def encode_gpt25_warm(paths: list[Path], _: int):
    """A second pass over the corpus: every pre-token is already in the cache."""
    work = encode_all(gpt2_tokenizer().encode, read_texts(paths))
    work()
    return work


def encode_gpt25_two_processes(paths: list[Path], _: int):
    tokenizer = gpt2_tokenizer()
    joined = Path(tempfile.mkdtemp()) / "corpus.txt"
    joined.write_bytes(b"".join(path.read_bytes() for path in paths))

    def work() -> None:
        for _ in tokenizer.encode_file(joined, num_workers=2):
            pass
        joined.unlink()

    return work


def tiktoken_gpt2():
    import tiktoken

    from gpt25.tokenizer import GPT2_PATTERN

    ours = gpt2_tokenizer()
    ranks = {token: token_id for token_id, token in ours.vocab.items() if token_id != ours.eot_id}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: ours.eot_id})


def encode_tiktoken(paths: list[Path], _: int):
    return encode_all(tiktoken_gpt2().encode_ordinary, read_texts(paths))


def encode_tiktoken_two_threads(paths: list[Path], _: int):
    encoding, texts = tiktoken_gpt2(), read_texts(paths)
    chunks = [text[start : start + (1 << 20)] for text in texts for start in range(0, len(text), 1 << 20)]
    return lambda: encoding.encode_ordinary_batch(chunks, num_threads=2)


def encode_hf(paths: list[Path], _: int):
    from tokenizers import Tokenizer as HFTokenizer

    with tempfile.TemporaryDirectory() as folder:
        hf = HFTokenizer.from_file(str(gpt2_tokenizer().save_huggingface(Path(folder) / "tokenizer.json")))
    return encode_all(hf.encode, read_texts(paths))


def encode_iterable_stream(paths: list[Path], megabytes: int):
    """Lines of the corpus, repeated lazily until `megabytes` of text have been produced."""
    tokenizer = gpt2_tokenizer()

    def stream():
        produced = 0
        while True:
            for line in iter_lines(paths):
                yield line
                produced += len(line)
                if produced >= megabytes * 1_000_000:
                    return

    def work() -> None:
        for _ in tokenizer.encode_iterable(stream()):
            pass

    return work


TASKS = {
    "train-gpt25": train_gpt25, "train-hf-files": train_hf_files, "train-hf-iterator": train_hf_iterator,
    "train-rustbpe": train_rustbpe, "train-small": train_small,
    "encode-gpt25": encode_gpt25, "encode-gpt25-warm": encode_gpt25_warm, "encode-gpt25-python": encode_gpt25_pure_python, "encode-gpt25-2proc": encode_gpt25_two_processes,
    "encode-tiktoken": encode_tiktoken, "encode-tiktoken-2threads": encode_tiktoken_two_threads, "encode-hf": encode_hf,
    "encode-iterable": encode_iterable_stream,
}


def run_task(task: str, argument: str) -> dict:
    """Body of a measurement subprocess: set up one task, then time its work."""
    if task not in TASKS:
        raise SystemExit(f"unknown task {task}")
    work = TASKS[task](corpus_paths(SHARED_DATA), int(argument))
    started, cpu_started = time.perf_counter(), cpu_seconds()
    work()
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    own, children = peak_rss_mb()
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_mb": own, "worker_rss_mb": children}


def measure(task: str, argument: str = "0", threads: int = 2) -> dict:
    """One run of `task` in a fresh subprocess (so it starts cold); {"error": ...} when it fails."""
    environment = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
    result = subprocess.run([sys.executable, __file__, "--task", task, argument], capture_output=True, check=False,
                            text=True, env=environment)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_in_turns(runs: list[tuple[str, str, int]], repeats: int) -> list[dict]:
    """The fastest of `repeats` runs of each (task, argument, threads), the tasks taking turns."""
    best: list[dict | None] = [None] * len(runs)
    for _ in range(repeats):
        for index, (task, argument, threads) in enumerate(runs):
            if best[index] is not None and "error" in best[index]:
                continue
            run = measure(task, argument, threads)
            if best[index] is None or "error" in run or run["seconds"] < best[index]["seconds"]:
                best[index] = run
    return best


# ---- the table -------------------------------------------------------------------------------


def format_row(measurement: str, library: str, result: dict | None, megabytes: float | None, reference: float | None) -> str:
    if result is None or "error" in result:
        note = "not run" if result is None else result["error"][:60]
        return f"| {measurement} | {library} | - | - | - | - | - | {note} |"
    seconds = result["seconds"]
    throughput = f"{megabytes / seconds:.1f} MB/s" if megabytes else "-"
    memory = f"{result['rss_mb']:.0f}" + (f" (+{result['worker_rss_mb']:.0f}/worker)" if result["worker_rss_mb"] > 1 else "")
    ratio = f"{seconds / reference:.2f}" if reference and library != "gpt25" else "-"
    return f"| {measurement} | {library} | {seconds:.2f} | {result['cpu_seconds']:.2f} | {throughput} | {memory} | {ratio} | |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="vocab 8192 only and a 100 MB stream")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=None, help="training vocab sizes (default 8192 32000)")
    parser.add_argument("--stream-mb", type=int, default=None, help="size of the encode_iterable stream (default 1000)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each measurement; the fastest counts (the encode_iterable stream runs once)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-encode", action="store_true")
    parser.add_argument("--task", nargs=2, metavar=("NAME", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:
        print(json.dumps(run_task(*args.task)))
        return
    megabytes = sum(path.stat().st_size for path in corpus_paths(SHARED_DATA)) / 1e6
    vocab_sizes = args.vocab_sizes or ([8192] if args.quick else [8192, 32000])
    stream_mb = args.stream_mb or (100 if args.quick else 1000)
    rows = ["| measurement | library | seconds | CPU s | throughput | peak RSS MB | other time / gpt25 time | note |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    if not args.skip_train:
        trainers = [("gpt25", "train-gpt25"), ("HF Tokenizer.train(files)", "train-hf-files"),
                    ("HF train_from_iterator", "train-hf-iterator"), ("rustbpe", "train-rustbpe")]
        for vocab_size in vocab_sizes:
            name = f"train {megabytes:.0f} MB, vocab {vocab_size}, 2 proc"
            results = measure_in_turns([(task, str(vocab_size), 2) for _, task in trainers], args.repeats)
            reference = results[0].get("seconds")
            for (library, _), result in zip(trainers, results, strict=True):
                rows.append(format_row(name, library, result, None, reference))
            print("\n".join(rows[-4:]), file=sys.stderr)
        rows.append(format_row("train corpus.en, vocab 500", "gpt25", measure_in_turns([("train-small", "500", 2)], args.repeats)[0],
                               None, None))
    if not args.skip_encode:
        name = f"encode {megabytes:.0f} MB, GPT-2 vocab"
        ours, warm, pure, tiktoken, hf = measure_in_turns(
            [("encode-gpt25", "0", 1), ("encode-gpt25-warm", "0", 1), ("encode-gpt25-python", "0", 1),
             ("encode-tiktoken", "0", 1), ("encode-hf", "0", 1)],
            args.repeats)
        rows.append(format_row(name + ", 1 proc", "gpt25", ours, megabytes, None))
        rows.append(format_row(name + ", 1 proc", "gpt25, 2nd pass (warm cache)", warm, megabytes, None))
        rows.append(format_row(name + ", 1 proc", "gpt25 without the C extension", pure, megabytes, None))
        rows.append(format_row(name + ", 1 proc", "tiktoken", tiktoken, megabytes, ours.get("seconds")))
        rows.append(format_row(name + ", 1 proc", "HF tokenizers", hf, megabytes, ours.get("seconds")))
        ours_two, tiktoken_two = measure_in_turns([("encode-gpt25-2proc", "0", 2), ("encode-tiktoken-2threads", "0", 2)],
                                                  args.repeats)
        rows.append(format_row(name + ", 2 proc", "gpt25 (encode_file)", ours_two, megabytes, None))
        rows.append(format_row(name + ", 2 proc", "tiktoken (2 threads)", tiktoken_two, megabytes, ours_two.get("seconds")))
        rows.append(format_row(f"encode_iterable, {stream_mb} MB stream", "gpt25",
                               measure("encode-iterable", str(stream_mb), threads=1), stream_mb, None))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
