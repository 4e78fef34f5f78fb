"""`gpt25 data import-raw` speed: its validation pass vs `numpy.fromfile(...).max()` on the same file.

Writes a random uint16 token file (ids below GPT-2's 50,257, so an <|endoftext|> now and then) of
`--size_gb` GB into a temporary folder, then alternates, `--repeats` times, a fresh process that
runs import-raw's validation pass on it (size, every id below the vocab, <|endoftext|> ids counted)
and a fresh process that runs `numpy.fromfile(path, dtype=uint16).max()`, the simplest full read.
Each reports its seconds and its peak RSS; the fastest run of each counts. The file lies in the
page cache as it was just written (where memory allows), the same for both. Target: ratio near 1
(disk speed) with flat memory (peak RSS about that of an idle process plus a 16 MiB block).
The folder is deleted at the end.

    uv run python benchmarks/import_raw.py                  # 2 GB
    uv run python benchmarks/import_raw.py --size_gb 0.5    # quicker
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

GPT2_VOCAB = 50257  # its <|endoftext|> is the last id, 50256
BLOCK_TOKENS = 1 << 24


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size_gb", type=float, default=2.0, help="size of the generated token file (default: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each contender, alternating; the fastest counts")
    return parser.parse_args()


def write_token_file(path: Path, num_bytes: int) -> None:
    """Random uint16 ids below GPT-2's vocab, block by block (the generator's memory stays small)."""
    rng = np.random.default_rng(0)
    remaining = num_bytes // 2
    with open(path, "wb") as file:
        while remaining:
            count = min(BLOCK_TOKENS, remaining)
            rng.integers(0, GPT2_VOCAB, count, dtype=np.uint16).tofile(file)
            remaining -= count


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_import_raw(token_file: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of import-raw's validation pass (`scan_token_file`, GPT-2's vocab) on the
    file, in this (fresh) process."""
    from gpt25.data.raw import RAW_DTYPES, scan_token_file

    started = time.perf_counter()
    scan_token_file(Path(token_file), RAW_DTYPES["uint16"], GPT2_VOCAB, GPT2_VOCAB - 1)
    return time.perf_counter() - started, peak_rss_mb()


def run_numpy_max(token_file: str) -> tuple[float, float]:
    """(seconds, peak RSS MB) of numpy.fromfile(...).max() on the file, in this (fresh) process."""
    started = time.perf_counter()
    np.fromfile(token_file, dtype=np.uint16).max()
    return time.perf_counter() - started, peak_rss_mb()


def idle_rss_mb() -> tuple[float, float]:
    """(0, peak RSS MB) of a fresh process that imported gpt25.data.raw (and numpy) and did nothing."""
    import gpt25.data.raw  # noqa: F401

    return 0.0, peak_rss_mb()


def in_fresh_process(function, *args) -> tuple[float, float]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="gpt25-import-raw-") as temporary:
        folder = Path(temporary)
        token_file = folder / "tokens.bin"
        num_bytes = int(args.size_gb * 1e9) // 2 * 2
        started = time.perf_counter()
        write_token_file(token_file, num_bytes)
        print(f"wrote {num_bytes / 1e9:.2f} GB of random uint16 ids below {GPT2_VOCAB:,} "
              f"in {time.perf_counter() - started:.1f} s")
        results: dict[str, list[tuple[float, float]]] = {"import-raw": [], "numpy": []}
        for _ in range(args.repeats):
            results["import-raw"].append(
                in_fresh_process(run_import_raw, str(token_file)))
            results["numpy"].append(in_fresh_process(run_numpy_max, str(token_file)))
        idle_mb = in_fresh_process(idle_rss_mb)[1]
    ours, theirs = min(results["import-raw"]), min(results["numpy"])
    megabytes = num_bytes / 1e6
    rows = [
        ("import-raw validation MB/s", f"{megabytes / ours[0]:,.0f}"),
        ("numpy.fromfile(...).max() MB/s", f"{megabytes / theirs[0]:,.0f}"),
        ("ratio (import-raw / numpy)", f"{theirs[0] / ours[0]:.2f}"),
        ("import-raw peak RSS MB", f"{max(rss for _, rss in results['import-raw']):,.0f}"),
        ("numpy.fromfile peak RSS MB", f"{max(rss for _, rss in results['numpy']):,.0f}"),
        ("idle process peak RSS MB", f"{idle_mb:,.0f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\n{'measure':<{width}}  value\n{'-' * width}  -----")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
