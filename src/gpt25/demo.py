"""`gpt25 demo` (`run_demo`): the whole pipeline end to end on the embedded Python-docs corpus, on a CPU, each
stage calling the ordinary commands' functions. Manual: README.md (Two commands), docs/chat.md (In the demo)."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt25.chat import chat
from gpt25.checkpoint import list_checkpoints, load_for_inference, read_meta
from gpt25.data import load_split, read_manifest
from gpt25.data.default_corpus import CHAT_SET_SPEC, iter_default_corpus, write_corpus_file
from gpt25.data.prepare import PrepareConfig, prepare
from gpt25.eval.run import run_evaluation
from gpt25.files import write_json_atomic, write_text_atomic
from gpt25.sample import generate
from gpt25.tokenizer import END_OF_TEXT, Tokenizer, train_bpe
from gpt25.train import TrainConfig, plot_runs, train
from gpt25.train.config import SFTConfig, read_toml_settings
from gpt25.train.distributed import init_distributed
from gpt25.train.sft import sft
from gpt25.train.trainer import Trainer

CPU_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu-small.toml"
MIN_TRAIN_STEPS = 20
# What training adds to the timed step: loading batches, 8 evaluations, 4 checkpoints, logging (measured
# 2026-12-05 on 2 cores: 79 steps timed at 3.45 s took 428 s in all).
TRAINING_OVERHEAD = 1.5
# Fine-tuning steps per pretraining step when --sft_steps is not given: an SFT step (8 rows of 256 tokens)
# costs about half a pretraining step (16 x 256), so fine-tuning takes about a fifth of pretraining's time.
SFT_STEPS_PER_TRAIN_STEP = 0.4
PROMPT = "Return a new"
QUESTIONS = ("What does `shutil.copytree` do?", "What arguments does `json.dumps` take?",
             "How do I return the final component of a pathname?")
# The SFT stage: short, on 2 cores about a minute and a half (8 rows of 256 tokens a step).
SFT_SETTINGS = {"batch_size": 8, "lr": 1e-3, "min_lr": 1e-4, "eval_steps": 4, "log_every": 5, "val_fraction": 0.02}
# The stages in order; the README's transcript is checked against these names.
STAGES = ("corpus", "tokenizer", "shards", "train", "evaluate", "generate", "sft", "chat", "report")
# Settings that only say how long a run goes and how often it reports: a longer run resumes the earlier one.
RUN_LENGTH = ("train_steps", "eval_every", "save_every")


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    minutes: float = 5.0  # the pretraining budget on this machine (timed steps decide how many fit)
    train_steps: int | None = None  # exactly this many instead: the same tokens on any machine
    fresh: bool = False
    vocab_size: int = 4096
    config: Path = CPU_CONFIG
    arch: str = "gpt25"  # the model: gpt25 (the recipe) or gpt2
    device: str = "cpu"
    prompt: str = PROMPT
    num_samples: int = 3
    sft_steps: int | None = None  # default: SFT_STEPS_PER_TRAIN_STEP x the pretraining steps
    seconds_per_step: float | None = None  # measured when the steps come from --minutes
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Each stage's results; a SIGINT/SIGTERM while training or fine-tuning ends them at "train" (or "sft"),
    whose `stopped_by` names the signal."""
    if config.minutes <= 0 or min(config.train_steps or 1, config.sft_steps or 1) < 1:
        raise ValueError(f"--minutes, --train_steps and --sft_steps must be positive, got {config.minutes}, "
                         f"{config.train_steps} and {config.sft_steps}")
    if not config.config.is_file():
        raise FileNotFoundError(f"training config {config.config} not found; pass --config FILE.toml")
    if config.fresh and config.out.exists():
        shutil.rmtree(config.out)
    paths = demo_paths(config.out)
    stages = list(zip(STAGES, (
        lambda: build_corpus(paths),
        lambda: build_tokenizer(paths, config.vocab_size),
        lambda: build_shards(paths),
        lambda: train_model(paths, config),
        lambda: evaluate_model(paths, config),
        lambda: sample_model(paths, config),
        lambda: fine_tune(paths, config),
        lambda: chat_samples(paths, config),
        lambda: write_report(paths, config, results),
    ), strict=True))
    results: dict[str, Any] = {}
    for number, (name, stage) in enumerate(stages, start=1):
        log(f"[{number}/{len(stages)}] {name} ...")
        started = time.perf_counter()
        outcome = stage()
        config.timings[name] = time.perf_counter() - started
        results[name] = outcome
        if name in ("train", "sft") and outcome.get("stopped_by"):  # a signal: stop here, as `gpt25 train` does
            log(f"[{number}/{len(stages)}] {name} stopped by {outcome['stopped_by']}; run `gpt25 demo` again "
                "with the same --out to resume it")
            return results
        log(f"[{number}/{len(stages)}] {name} done in {config.timings[name]:.1f} s: {summarize(name, outcome)}")
    return results


def demo_paths(out: Path) -> dict[str, Path]:
    return {
        "corpus": out / "data" / "python-docs.txt",
        "tokenizer": out / "tokenizer",
        "shards": out / "data" / "shards",
        "run": out / "run",
        "sft": out / "sft",
        "report": out / "report.md",
        "plot": out / "results.png",
        "eval": out / "eval.json",
        "stages": out / "stages.json",
    }


def made_from(paths: dict[str, Path], stage: str, inputs: dict[str, Any], output: Path) -> bool:
    """Whether `output` was made from exactly `inputs`, as OUT/stages.json records; when not, it is deleted so
    the stage starts over, and `inputs` recorded for the run about to make it."""
    recorded = json.loads(paths["stages"].read_text()) if paths["stages"].is_file() else {}
    if recorded.get(stage) == inputs and output.exists():
        return True
    if output.is_dir():
        shutil.rmtree(output)
    elif output.exists():
        output.unlink()
    write_json_atomic(paths["stages"], recorded | {stage: inputs})
    return False


def build_corpus(paths: dict[str, Path]) -> dict[str, Any]:
    if paths["corpus"].is_file():
        text = paths["corpus"].read_text(encoding="utf-8")
        return {"reused": True, "documents": text.count(END_OF_TEXT) + 1, "bytes": len(text.encode("utf-8"))}
    num_documents, num_bytes = write_corpus_file(iter_default_corpus(), paths["corpus"])
    return {"reused": False, "documents": num_documents, "bytes": num_bytes}


def build_tokenizer(paths: dict[str, Path], vocab_size: int) -> dict[str, Any]:
    corpus = paths["corpus"].stat()
    inputs = {"vocab_size": vocab_size, "corpus_bytes": corpus.st_size, "corpus_mtime_ns": corpus.st_mtime_ns}
    if made_from(paths, "tokenizer", inputs, paths["tokenizer"]):
        return {"reused": True, "vocab_size": Tokenizer.load(paths["tokenizer"]).vocab_size}
    vocab, merges = train_bpe(paths["corpus"], vocab_size, [END_OF_TEXT], progress=True)
    Tokenizer(vocab, merges, [END_OF_TEXT]).save(paths["tokenizer"])
    return {"reused": False, "vocab_size": len(vocab)}


def build_shards(paths: dict[str, Path]) -> dict[str, Any]:
    made_from(paths, "shards", {"tokenizer": Tokenizer.load(paths["tokenizer"]).fingerprint()}, paths["shards"])
    manifest = prepare(PrepareConfig(  # prepare itself resumes or skips finished work
        sources=["python-docs"], tokenizer_dir=str(paths["tokenizer"]), out_dir=str(paths["shards"]),
        val_fraction=0.05, workers=2,
    ))
    return {split: manifest["splits"][split]["tokens"] for split in ("train", "val")}


def train_model(paths: dict[str, Path], config: DemoConfig) -> dict[str, Any]:
    settings = read_toml_settings(config.config) | {
        "data": str(paths["shards"]), "tokenizer": str(paths["tokenizer"]), "out": str(paths["run"]),
        "device": config.device, "arch": config.arch,
    }
    inputs = {name: value for name, value in settings.items() if name not in RUN_LENGTH} | {
        "shards": read_manifest(paths["shards"])["splits"], "config": str(config.config)}
    made_from(paths, "train", inputs, paths["run"])
    finished = list_checkpoints(paths["run"])
    config.train_steps = resolve_train_steps(paths, config, settings)
    config.sft_steps = config.sft_steps or max(MIN_TRAIN_STEPS, round(config.train_steps * SFT_STEPS_PER_TRAIN_STEP))
    settings |= {"train_steps": config.train_steps, "eval_every": max(1, config.train_steps // 8),
                 "save_every": max(1, config.train_steps // 4)}
    if finished and read_meta(finished[-1])["step"] >= config.train_steps:
        return {"reused": True, "checkpoint": str(finished[-1]), "train_steps": config.train_steps}
    if finished:
        settings["checkpoint"] = "latest"
    return train(TrainConfig(**settings))


def resolve_train_steps(paths: dict[str, Path], config: DemoConfig, settings: dict[str, Any]) -> int:
    """--train_steps; else an earlier run's (which a second demo reuses or resumes); else as many as fit --minutes."""
    if config.train_steps:
        return config.train_steps
    earlier = paths["run"] / "config.json"
    if earlier.is_file():
        return int(json.loads(earlier.read_text())["train_steps"])
    config.seconds_per_step = time_training_step(TrainConfig(**settings))
    return steps_for_budget(config.minutes, config.seconds_per_step)


def steps_for_budget(minutes: float, seconds_per_step: float) -> int:
    return max(MIN_TRAIN_STEPS, int(minutes * 60 / (seconds_per_step * TRAINING_OVERHEAD)))


def time_training_step(train_config: TrainConfig, repeats: int = 2) -> float:
    """Seconds of one optimizer step of the configured run (the trainer's own step on its data); writes nothing."""
    trainer = Trainer(train_config, init_distributed(train_config.device))
    timings = []
    for _ in range(repeats + 1):  # the fastest after a first that warms up the allocator and kernels
        started = time.perf_counter()
        trainer.train_step(stop_requested=False)  # its losses and norms come back to the host: the step is done
        timings.append(time.perf_counter() - started)
    return min(timings[1:])


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on val of the add-one-smoothed token frequencies of train."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(val_tokens, dtype=np.int64)].mean())


def evaluate_model(paths: dict[str, Path], config: DemoConfig) -> dict[str, Any]:
    results = run_evaluation(paths["run"], paths["tokenizer"], data_dir=paths["shards"], out=paths["eval"],
                             device=config.device)
    tokenizer = Tokenizer.load(paths["tokenizer"])
    baseline = unigram_loss(load_split(paths["shards"], "train", tokenizer), load_split(paths["shards"], "val", tokenizer),
                            tokenizer.vocab_size)
    results |= {"unigram_loss": baseline, "unigram_perplexity": math.exp(baseline)}
    write_json_atomic(paths["eval"], results)
    return results


def sample_model(paths: dict[str, Path], config: DemoConfig) -> list[str]:
    model, tokenizer, _ = load_for_inference(paths["run"], paths["tokenizer"], config.device)
    return generate(model, tokenizer, config.prompt, num_samples=config.num_samples, seed=1337)


def fine_tune(paths: dict[str, Path], config: DemoConfig) -> dict[str, Any]:
    base = list_checkpoints(paths["run"])[-1]
    made_from(paths, "sft", {"base": str(base), "base_step": read_meta(base)["step"], "device": config.device,
                             "tokenizer": Tokenizer.load(paths["tokenizer"]).fingerprint()}, paths["sft"])
    finished = list_checkpoints(paths["sft"])
    if finished and read_meta(finished[-1])["step"] >= config.sft_steps:
        return {"reused": True, "checkpoint": str(finished[-1]), "train_steps": config.sft_steps}
    settings = SFT_SETTINGS | {
        "checkpoint": "latest" if finished else str(paths["run"]), "tokenizer": str(paths["tokenizer"]),
        "data": CHAT_SET_SPEC, "out": str(paths["sft"]), "train_steps": config.sft_steps, "device": config.device,
        "warmup_steps": min(10, config.sft_steps), "eval_every": max(1, config.sft_steps // 5),
        "save_every": max(1, config.sft_steps // 2)}
    return sft(SFTConfig(**settings))


def chat_samples(paths: dict[str, Path], config: DemoConfig) -> list[dict[str, str]]:
    """Each question answered by the chat model beside the base model's continuation of it."""
    base, base_tokenizer, _ = load_for_inference(paths["run"], paths["tokenizer"], config.device)
    chat_model, chat_tokenizer, _ = load_for_inference(paths["sft"], paths["sft"] / "tokenizer", config.device)
    return [{"question": question,
             "chat": chat(chat_model, chat_tokenizer, [{"role": "user", "content": question}], max_new_tokens=60,
                          seed=1337),
             "base": generate(base, base_tokenizer, question, max_new_tokens=40, seed=1337)[0]}
            for question in QUESTIONS]


def write_report(paths: dict[str, Path], config: DemoConfig, results: dict[str, Any]) -> dict[str, str]:
    plot_runs([paths["run"], paths["sft"]], paths["plot"])
    write_text_atomic(paths["report"], render_report(paths, config, results))
    return {"report": str(paths["report"]), "plot": str(paths["plot"])}


def render_report(paths: dict[str, Path], config: DemoConfig, results: dict[str, Any]) -> str:
    metrics = results["evaluate"]
    manifest = read_manifest(paths["shards"])
    lines = [
        "# gpt25 demo report",
        "",
        "## Settings",
        "",
        f"- corpus: the embedded Python documentation ({results['corpus']['documents']} documents, "
        f"{results['corpus']['bytes'] / 1e6:.2f} MB)",
        f"- tokenizer: byte-level BPE, vocab {results['tokenizer']['vocab_size']}, special `{END_OF_TEXT}`",
        f"- shards: {manifest['splits']['train']['tokens']:,} train tokens, {manifest['splits']['val']['tokens']:,} val tokens",
        f"- model and optimizer: `{config.config.name}`, --arch {config.arch}, with train_steps {config.train_steps} "
        f"({steps_source(config)})",
        f"- sampling: temperature 0.8, top-p 0.9, 50 new tokens, prompt {config.prompt!r}",
        f"- fine-tuning: `gpt25 sft` on the embedded chat set, {config.sft_steps} steps of 8 packed rows, "
        "loss on the assistant's tokens only (curves: run `sft` in the plot)",
        "",
        "## Timings",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in config.timings.items()),
        "",
        "## Final metrics (validation split)",
        "",
        "| metric | model | unigram baseline |",
        "|---|---:|---:|",
        f"| loss (nats/token) | {metrics['val_loss']:.4f} | {metrics['unigram_loss']:.4f} |",
        f"| perplexity | {metrics['val_perplexity']:.2f} | {metrics['unigram_perplexity']:.2f} |",
        f"| bits per byte | {metrics['val_bpb']:.4f} | |",
        "",
        f"![results]({paths['plot'].name})",
        "",
        "## Samples",
        "",
        *(line for number, sample in enumerate(results["generate"], start=1)
          for line in (f"Sample {number}:", "", "```text", config.prompt + sample, "```", "")),
        "",
        "## Chat: the fine-tuned model beside the base model",
        "",
        "Each question is the user's message to the chat model and the prompt that the base model continues "
        "(40 tokens); both sampled as above.",
        "",
        *(line for sample in results["chat"] for line in (
            f"**{sample['question']}**", "", "chat model:", "", "```text", sample["chat"], "```", "",
            "base model:", "", "```text", sample["question"] + sample["base"], "```", "")),
        "## Re-run any stage by hand",
        "",
        "```bash",
        *stage_commands(paths, config),
        "```",
        "",
    ]
    return "\n".join(lines)


def steps_source(config: DemoConfig) -> str:
    if config.seconds_per_step is None:
        return "given, or those of the run reused"
    return f"--minutes {config.minutes:g} at {config.seconds_per_step:.2f} s a step, timed on this machine"


def stage_commands(paths: dict[str, Path], config: DemoConfig) -> list[str]:
    return [
        f"gpt25 data corpus --out {paths['corpus']}",
        f'gpt25 tokenizer train --input {paths["corpus"]} --vocab_size {config.vocab_size} '
        f'--special_token "{END_OF_TEXT}" --out {paths["tokenizer"]} --force',
        f"gpt25 data prepare --source python-docs --tokenizer {paths['tokenizer']} --out {paths['shards']} "
        "--val_fraction 0.05 --workers 2",
        f"gpt25 train --config {config.config} --data {paths['shards']} --tokenizer {paths['tokenizer']} "
        f"--out {paths['run']} --train_steps {config.train_steps} --arch {config.arch} --device {config.device}",
        f"gpt25 eval --checkpoint {paths['run']} --tokenizer {paths['tokenizer']} --data {paths['shards']}",
        f'gpt25 generate --checkpoint {paths["run"]} --tokenizer {paths["tokenizer"]} --prompt "{config.prompt}" '
        f"--num_samples {config.num_samples}",
        f"gpt25 sft --checkpoint {paths['run']} --tokenizer {paths['tokenizer']} --data {CHAT_SET_SPEC} "
        f"--out {paths['sft']} --train_steps {config.sft_steps} --batch_size 8 --lr 1e-3 --warmup_steps 10",
        f"gpt25 plot {paths['run']} {paths['sft']} --out {paths['plot']}",
    ]


def summarize(stage: str, outcome: Any) -> str:
    if stage == "corpus":
        return f"{outcome['documents']} documents, {outcome['bytes'] / 1e6:.2f} MB" + (" (reused)" if outcome["reused"] else "")
    if stage == "tokenizer":
        return f"vocab {outcome['vocab_size']}" + (" (reused)" if outcome["reused"] else "")
    if stage == "shards":
        return f"{outcome['train']:,} train / {outcome['val']:,} val tokens"
    if stage in ("train", "sft"):
        if outcome.get("reused"):
            return f"reused {outcome['checkpoint']}"
        return f"{outcome['step']} steps, final train loss {outcome['final_train_loss']:.3f}"
    if stage == "evaluate":
        return (f"val loss {outcome['val_loss']:.3f} (perplexity {outcome['val_perplexity']:.1f}) vs unigram "
                f"{outcome['unigram_loss']:.3f} (perplexity {outcome['unigram_perplexity']:.1f})")
    if stage == "generate":
        return f"{len(outcome)} samples"
    if stage == "chat":
        return f"{len(outcome)} questions answered"
    return f"report {outcome['report']}, plot {outcome['plot']}"
