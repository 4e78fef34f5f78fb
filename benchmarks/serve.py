"""Serving throughput and latency: `gpt25 serve`'s batching engine vs one request at a time through `generate`.

A random model of the demo's size (configs/cpu-small.toml: 4 layers, d_model 256, context 256,
vocab 4096) over a byte tokenizer without an end-of-text token, so that every request generates
exactly --max-tokens tokens on both sides. For 1, 4 and 16 concurrent clients, each client sends
--requests streaming completion requests one after another (prompts of 20-60 bytes, temperature
0.8, a seed each) to a live server on 127.0.0.1 and records the time to the first token and the
total latency. The clients run in a process of their own, as a server's clients do (they share
the machine's two cores with the server, not its interpreter), over asyncio streams on uvloop: a load
generator's lean client, which parses every event's JSON but leaves the cores to the server. The
baseline serves the same requests one at a time through `gpt25.sample.generate` (a lock around it,
the GPT 2.5 project's design), in-process, without HTTP, which only favours it.
Aggregate tokens/s = all generated tokens / wall time of the level. Each level runs --rounds times
(one client's, a second long, 4x as many), server and baseline alternating (which goes first
alternates too): the speed-up is the median of the rounds' paired ratios, since a shared machine's
speed drifts by 20% or more between runs.

Then a soak: --soak requests from 16 clients, a quarter of them cancelled mid-stream, a quarter
abandoned (a whole-reply request whose client gives up after 50 ms), the rest answered; it checks
every request was answered or cancelled, that no row or waiting request is left in the engine, and
prints the resident memory after warm-up and at the end (the target: within 10%).

    uv run python benchmarks/serve.py            # 4 requests per client, 3 rounds, a soak of 500
    uv run python benchmarks/serve.py --quick    # 1 request per client, 1 round, a soak of 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import threading
import time
import tomllib
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import torch
import uvicorn
import uvloop

from gpt25.model import ModelConfig, TransformerLM
from gpt25.sample import generate
from gpt25.serve.api import Limits, Served, create_app
from gpt25.serve.engine import Engine
from gpt25.tokenizer import Tokenizer

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu-small.toml"
MODEL_KEYS = ("context_length", "num_layers", "d_model", "num_heads", "rope_theta")  # d_ff: the preset's


def demo_size_model() -> TransformerLM:
    settings = tomllib.loads(DEMO_CONFIG.read_text())
    torch.manual_seed(0)
    shape = {key: settings[key] for key in MODEL_KEYS}
    return TransformerLM(ModelConfig.preset("gpt25", vocab_size=4096, **shape)).eval()


def workload(clients: int, per_client: int, seed: int) -> list[list[dict]]:
    """Each client's requests: a prompt of 20-60 printable bytes and a seed."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz     .,"
    return [[{"prompt": "".join(rng.choice(letters) for _ in range(rng.randint(20, 60))), "seed": rng.randrange(10**6)}
             for _ in range(per_client)] for _ in range(clients)]


def start_server(served: Served) -> tuple[str, uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: served, Limits(max_tokens=256)), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server, thread


class Connection:
    """One client's keep-alive HTTP/1.1 connection, read with asyncio's streams: a load generator's client, lean so
    that its work on the server's two cores stays small (httpx spent 0.2-0.55 ms of CPU per streamed chunk)."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_stream(self, path: str, body: dict) -> AsyncIterator[dict]:
        """POST `body` as JSON; yield each server-sent event's JSON payload (chunked transfer encoding)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
                          f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
        pending = b""
        while True:
            size = int(await self.reader.readuntil(b"\r\n"), 16)
            data = await self.reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return
            pending += data[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: {"):
                    yield json.loads(event[6:])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def stream_one(connection: Connection, request: dict, max_tokens: int) -> dict:
    body = {"prompt": request["prompt"], "seed": request["seed"], "max_tokens": max_tokens, "temperature": 0.8,
            "stream": True}
    started = time.perf_counter()
    first, tokens = None, 0
    async for chunk in connection.post_stream("/v1/completions", body):
        if first is None and chunk["choices"][0]["text"]:
            first = time.perf_counter()
        tokens = chunk.get("usage", {}).get("completion_tokens", tokens)
    return {"ttft": (first or time.perf_counter()) - started, "latency": time.perf_counter() - started,
            "tokens": tokens}


async def served_level(url: str, requests: list[list[dict]], max_tokens: int) -> tuple[list[dict], float]:
    async def client(own: list[dict]) -> list[dict]:
        connection = Connection(url)
        try:
            return [await stream_one(connection, request, max_tokens) for request in own]
        finally:
            connection.close()

    started = time.perf_counter()
    results = await asyncio.gather(*(client(own) for own in requests))
    return [result for own in results for result in own], time.perf_counter() - started


def run_clients(url: str, requests: list[list[dict]], max_tokens: int) -> tuple[list[dict], float]:
    """`served_level` in the clients' process, on uvloop (the server's loop too), which leaves more of the shared
    cores to the server than asyncio's own loop (docs/serve.md, "What one client pays")."""
    return uvloop.run(served_level(url, requests, max_tokens))


def baseline_level(model, tokenizer, requests: list[list[dict]], max_tokens: int) -> tuple[list[dict], float]:
    """The same requests, one `generate` at a time (a lock), from one thread per client."""
    lock = threading.Lock()
    results: list[dict] = []

    def client(own: list[dict]) -> None:
        for request in own:
            started = time.perf_counter()
            first: list[float] = []
            with lock:
                generate(model, tokenizer, request["prompt"], max_new_tokens=max_tokens, temperature=0.8,
                         top_p=1.0, seed=request["seed"],
                         on_token=lambda _row, _text, first=first: first or first.append(time.perf_counter()))
            results.append({"ttft": (first or [time.perf_counter()])[0] - started,
                            "latency": time.perf_counter() - started, "tokens": max_tokens})

    threads = [threading.Thread(target=client, args=(own,)) for own in requests]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def summary(results: list[dict], seconds: float) -> dict:
    return {"results": results, "tokens_per_s": sum(result["tokens"] for result in results) / seconds,
            "tokens": sum(result["tokens"] for result in results)}


def percentiles(runs: list[dict], key: str) -> str:
    """p50 / p95 of `key` over every request of `runs`."""
    values = sorted(result[key] for run in runs for result in run["results"])
    p50, p95 = (values[min(len(values) - 1, round(fraction * (len(values) - 1)))] for fraction in (0.5, 0.95))
    return f"{p50:.3f} / {p95:.3f} s"


def print_level(clients: int, served: list[dict], base: list[dict]) -> None:
    """One table row: median tokens/s of each side, the median paired ratio (its range), pooled percentiles."""
    assert all(run["tokens"] == base[0]["tokens"] for run in served + base), "both sides generate the same tokens"
    ratios = sorted(own["tokens_per_s"] / other["tokens_per_s"] for own, other in zip(served, base, strict=True))
    spread = f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
    print(f"| {clients} | {statistics.median(run['tokens_per_s'] for run in served):.0f} | "
          f"{statistics.median(run['tokens_per_s'] for run in base):.0f} | {statistics.median(ratios):.2f}x{spread} | "
          f"{percentiles(served, 'ttft')} | {percentiles(base, 'ttft')} | {percentiles(served, 'latency')} | "
          f"{percentiles(base, 'latency')} |", flush=True)


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak_one(http: httpx.AsyncClient, url: str, request: dict, kind: str, rng: random.Random) -> str:
    body = {"prompt": request["prompt"], "seed": request["seed"], "max_tokens": rng.randint(8, 48),
            "temperature": 0.8, "stream": kind == "cancel"}
    if kind == "cancel":
        async with http.stream("POST", url + "/v1/completions", json=body) as reply:
            async for _line in reply.aiter_lines():
                break  # the first chunk came: leave mid-stream
        return "cancelled"
    if kind == "disconnect":
        try:
            await http.post(url + "/v1/completions", json=body, timeout=0.05)
            return "answered"
        except httpx.TimeoutException:
            return "cancelled"
    reply = await http.post(url + "/v1/completions", json=body)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == body["max_tokens"], reply.text
    return "answered"


async def soak(url: str, engine: Engine, total: int, warmup: int) -> dict:
    rng = random.Random(1)
    requests = [request for own in workload(1, total, seed=2) for request in own]
    kinds = [rng.choice(["answer", "answer", "cancel", "disconnect"]) for _ in requests]
    outcomes: list[str] = []
    rss: dict[str, float] = {}
    queue = list(zip(requests, kinds, strict=True))
    async with httpx.AsyncClient(timeout=600) as http:
        async def client() -> None:
            while queue:
                request, kind = queue.pop()
                outcomes.append(await soak_one(http, url, request, kind, rng))
                if len(outcomes) == warmup and "warm" not in rss:
                    rss["warm"] = resident_mib()

        await asyncio.gather(*(client() for _ in range(16)))
    deadline = time.monotonic() + 10
    while engine.load() != (0, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return {"requests": len(outcomes), "answered": outcomes.count("answered"),
            "cancelled": outcomes.count("cancelled"), "left_in_engine": engine.load(),
            "rss_after_warmup_mib": rss["warm"], "rss_end_mib": resident_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 request per client, a soak of 100")
    parser.add_argument("--requests", type=int, default=4, help="requests per client (default 4)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    parser.add_argument("--soak", type=int, default=500, help="requests in the soak (default 500; 0: none)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating server / baseline runs per level (default 3)")
    parser.add_argument("--clients", default="1,4,16", help="the levels: concurrent clients, comma-separated")
    args = parser.parse_args()
    per_client, soak_total, rounds = (1, 100, 1) if args.quick else (args.requests, args.soak, args.rounds)
    model = demo_size_model()
    tokenizer = Tokenizer({index: bytes([index]) for index in range(256)}, [], [])  # no end-of-text: no early stop
    engine = Engine(model, tokenizer.vocab, tokenizer.vocab_size, max_batch=16, max_queue=512).start()
    url, server, thread = start_server(Served(engine, tokenizer, "demo-size"))
    print(f"torch threads {torch.get_num_threads()}; {per_client} request(s) per client of {args.max_tokens} tokens")
    clients_process = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    clients_process.submit(run_clients, url, workload(2, 1, seed=99), args.max_tokens).result()  # warm-up
    print(f"{rounds} round(s) per level ({rounds * 4} with one client); tokens/s: the median round; "
          "speed-up: the median of the rounds' ratios (range)")
    print("| clients | server tok/s | baseline tok/s | speed-up | TTFT p50 / p95 server | TTFT p50 / p95 baseline "
          "| latency p50 / p95 server | latency p50 / p95 baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for clients in map(int, args.clients.split(",")):
        requests = workload(clients, per_client, seed=clients)
        served, base = [], []
        for round_index in range(rounds * 4 if clients == 1 else rounds):  # one client's level is short: more rounds
            # Alternating which side goes first: a shared machine's speed drifts, and paired runs cancel the drift.
            for side in ("served", "base") if round_index % 2 == 0 else ("base", "served"):
                if side == "served":
                    served.append(clients_process.submit(run_clients, url, requests, args.max_tokens).result())
                else:
                    base.append(baseline_level(model, tokenizer, requests, args.max_tokens))
        print_level(clients, [summary(*run) for run in served], [summary(*run) for run in base])
    clients_process.shutdown()
    if soak_total:
        result = asyncio.run(soak(url, engine, soak_total, warmup=max(1, min(50, soak_total // 5))))
        growth = result["rss_end_mib"] / result["rss_after_warmup_mib"] - 1
        print(f"soak: {result['requests']} requests, {result['answered']} answered, {result['cancelled']} cancelled, "
              f"left in the engine (active, waiting) {result['left_in_engine']}; RSS after warm-up "
              f"{result['rss_after_warmup_mib']:.0f} MiB, at the end {result['rss_end_mib']:.0f} MiB ({growth:+.1%})")
    server.should_exit = True
    thread.join(30)


if __name__ == "__main__":
    main()
