"""CORE: the DCLM paper's in-context-learning score, rendered and scored exactly as nanochat does
(`load_core_tasks`, `evaluate_core`: under torch.distributed every rank must call it).
Manual: docs/evaluation.md (CORE: the bundle, order, prompts, tokens, scoring).
"""

from __future__ import annotations

import csv
import json
import os
import random
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from gpt25.eval.hellaswag import cache_dir, download_file
from gpt25.eval.scoring import rank_and_world_size, score_rows, sum_over_ranks

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
KINDS = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337
FEWSHOT_SEED = 1234


@dataclass
class CoreTask:
    label: str
    kind: str
    num_fewshot: int
    delimiter: str
    random_baseline: float  # percent, as eval_meta_data.csv gives it
    examples: list[dict]


def offline_hint() -> str:
    return (f"download {BUNDLE_URL} on a machine with internet, unzip it and pass its eval_bundle folder "
            f"with --core_bundle DIR (or put that folder at {cache_dir() / 'eval_bundle'})")


def fetch_bundle() -> Path:
    """The cached bundle folder, downloaded from BUNDLE_URL and unpacked on first use."""
    bundle = cache_dir() / "eval_bundle"
    if (bundle / "core.yaml").is_file():
        return bundle
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=bundle.parent) as temporary:
        archive = download_file(BUNDLE_URL, Path(temporary) / "eval_bundle.zip", offline_hint())
        with zipfile.ZipFile(archive) as unpacked:
            unpacked.extractall(temporary)
        try:  # one rename: readers never see half a bundle, and nothing a reader may hold is deleted
            Path(temporary, "eval_bundle").rename(bundle)
        except OSError:  # a folder is there: the copy another rank renamed in first, kept, or something else
            if not (bundle / "core.yaml").is_file():
                raise FileExistsError(f"{bundle} is not a CORE bundle (no core.yaml) and is in the way; remove it "
                                      "or pass --core_bundle DIR") from None
    return bundle


def load_core_tasks(bundle: str | Path | None = None, limit: int | None = None) -> list[CoreTask]:
    """Every task of the bundle (default: the cached download), its examples shuffled and cut to `limit`."""
    bundle = Path(bundle) if bundle else fetch_bundle()
    if not (bundle / "core.yaml").is_file():
        raise FileNotFoundError(f"{bundle} is not a CORE bundle (no core.yaml); {offline_hint()}")
    with open(bundle / "eval_meta_data.csv", encoding="utf-8") as file:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(file)}
    tasks = []
    for entry in yaml.safe_load((bundle / "core.yaml").read_text(encoding="utf-8"))["icl_tasks"]:
        if entry["icl_task_type"] not in KINDS:
            raise ValueError(f"{bundle / 'core.yaml'}: task {entry['label']} has unknown kind {entry['icl_task_type']!r}")
        with open(bundle / "eval_data" / entry["dataset_uri"], encoding="utf-8") as file:
            examples = [json.loads(line) for line in file if line.strip()]
        random.Random(SHUFFLE_SEED).shuffle(examples)
        tasks.append(CoreTask(entry["label"], entry["icl_task_type"], entry["num_fewshot"][0],
                              entry.get("continuation_delimiter", " "), baselines[entry["label"]],
                              examples[:limit] if limit else examples))
    return tasks


def fewshot_examples(task: CoreTask, index: int) -> list[dict]:
    if task.num_fewshot == 0:
        return []
    others = [other for other in range(len(task.examples)) if other != index]
    return [task.examples[other] for other in random.Random(FEWSHOT_SEED + index).sample(others, task.num_fewshot)]


def render_prompts(task: CoreTask, index: int) -> list[str]:
    """The prompts of example `index`: one per option, or (language modelling) without and with the answer."""
    example, delimiter, shots = task.examples[index], task.delimiter, fewshot_examples(task, index)
    if task.kind == "multiple_choice":
        prefix = "".join(f"{shot['query']}{delimiter}{shot['choices'][shot['gold']]}\n\n" for shot in shots)
        return [f"{prefix}{example['query']}{delimiter}{choice}" for choice in example["choices"]]
    if task.kind == "schema":
        prefix = "".join(f"{shot['context_options'][shot['gold']]}{delimiter}{shot['continuation']}\n\n"
                         for shot in shots)
        return [f"{prefix}{option}{delimiter}{example['continuation']}" for option in example["context_options"]]
    prefix = "".join(f"{shot['context'].strip()}{delimiter}{shot['continuation']}\n\n" for shot in shots)
    without = f"{prefix}{example['context'].strip()}{delimiter}"
    # Stripped so that trailing whitespace cannot merge into the continuation's first token.
    return [without.strip(), without + example["continuation"]]


def scored_sequences(tokenizer, task: CoreTask, index: int, max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, number of scored tokens at the end) per option, each cut to its last max_length tokens."""
    encoded = [[tokenizer.eot_id, *tokenizer.encode_ordinary(prompt)] for prompt in render_prompts(task, index)]
    # os.path.commonprefix compares any sequences element by element: here lists of token ids.
    if task.kind == "multiple_choice":
        start = len(os.path.commonprefix(encoded))
        rows = [(ids, len(ids) - start) for ids in encoded]
    elif task.kind == "schema":
        suffix = len(os.path.commonprefix([ids[::-1] for ids in encoded]))
        rows = [(ids, suffix) for ids in encoded]
    else:
        without, with_answer = encoded
        if with_answer[: len(without)] != without or len(with_answer) == len(without):
            raise ValueError(f"CORE task {task.label}, example {index}: the prompt without its continuation does "
                             "not tokenize to a prefix of the prompt with it")
        rows = [(with_answer, len(with_answer) - len(without))]
    # Scoring starts one position before the first scored token, so at most len - 1 tokens are scored.
    return [(ids[-max_length:], min(count, len(ids[-max_length:]) - 1)) for ids, count in rows]


def task_accuracy(model, tokenizer, task: CoreTask, *, batch_size: int, device, show_progress: bool) -> float:
    """The share of the task's examples answered correctly (all ranks together)."""
    rank, world_size = rank_and_world_size()
    mine = range(rank, len(task.examples), world_size)
    rows = [(index, ids, count) for index in mine
            for ids, count in scored_sequences(tokenizer, task, index, model.config.context_length)]
    sums, greedy = score_rows(model, rows, batch_size=batch_size, device=device, desc=task.label,
                              show_progress=show_progress)
    if task.kind == "language_modeling":  # one row per example: right when greedy decoding reproduces it
        correct = sum(greedy)
    else:  # the option of lowest mean loss, the first on a tie
        mean_log_likelihoods: dict[int, list[float]] = {index: [] for index in mine}
        for (index, _, count), total in zip(rows, sums, strict=True):
            mean_log_likelihoods[index].append(total / max(count, 1))
        correct = sum(options.index(max(options)) == task.examples[index]["gold"]
                      for index, options in mean_log_likelihoods.items())
    correct, count = sum_over_ranks([correct, len(mine)], device)
    return correct / count


def centred(accuracy: float, random_baseline: float) -> float:
    return (accuracy - 0.01 * random_baseline) / (1.0 - 0.01 * random_baseline)


def evaluate_core(model: torch.nn.Module, tokenizer, tasks: list[CoreTask], *, batch_size: int,
                  device: torch.device | str) -> dict:
    """{"core": mean centred accuracy, "tasks": {label: {"acc", "centered", "n", "kind", "shots"}}}."""
    if not tasks or any(not task.examples for task in tasks):
        raise ValueError("no CORE tasks, or a task without examples (an empty jsonl file in the bundle)")
    show_progress = rank_and_world_size()[0] == 0
    accuracies = [task_accuracy(model, tokenizer, task, batch_size=batch_size, device=device,
                                show_progress=show_progress) for task in tasks]
    results = {task.label: {"acc": accuracy, "centered": centred(accuracy, task.random_baseline),
                            "n": len(task.examples), "kind": task.kind, "shots": task.num_fewshot}
               for task, accuracy in zip(tasks, accuracies, strict=True)}
    return {"core": sum(result["centered"] for result in results.values()) / len(results), "tasks": results}
