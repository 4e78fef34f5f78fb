"""HellaSwag: pick the most likely of four endings, scored the way lm-evaluation-harness scores it
(`load_hellaswag`, `evaluate_hellaswag`: under torch.distributed every rank must call it).
Manual: docs/evaluation.md (HellaSwag).
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from gpt25.eval.scoring import rank_and_world_size, score_rows, sum_over_ranks
from gpt25.files import atomic_path

HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


def cache_dir() -> Path:
    """Where downloads are kept: $GPT25_CACHE, else ~/.cache/gpt25."""
    return Path(os.environ.get("GPT25_CACHE", Path.home() / ".cache" / "gpt25"))


def download_file(url: str, path: Path, offline_hint: str) -> Path:
    """Download `url` to `path` once (atomically); ConnectionError with `offline_hint` when it cannot."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except OSError as error:  # urllib's URLError is one
        raise ConnectionError(f"could not download {url} ({error}); {offline_hint}") from None
    with atomic_path(path) as temporary:
        temporary.write_bytes(payload)
    return path


def parse_example(line: str, where: str) -> dict:
    """One jsonl record -> {"ctx", "endings", "label"}; ValueError naming `where` when malformed."""
    try:
        record = json.loads(line)
        endings = [str(ending) for ending in record["endings"]]
        example = {"ctx": str(record["ctx"]), "endings": endings, "label": int(record["label"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: not a HellaSwag record with ctx, endings and label ({error!r})") from None
    if not example["endings"] or not 0 <= example["label"] < len(example["endings"]):
        raise ValueError(f"{where}: label {example['label']} does not index the {len(example['endings'])} endings")
    return example


def load_hellaswag(source: str | Path) -> list[dict]:
    """Examples {"ctx", "endings", "label"} from a jsonl file, or from the HellaSwag repository with "download"."""
    path = Path(source)
    if str(source) == "download":
        path = download_file(HELLASWAG_VAL_URL, cache_dir() / "hellaswag_val.jsonl",
                             "fetch hellaswag_val.jsonl elsewhere and pass it with --hellaswag FILE")
    if not path.is_file():
        raise FileNotFoundError(f"HellaSwag file {path} not found; pass a hellaswag_val.jsonl or 'download'")
    with open(path, encoding="utf-8") as file:
        examples = [parse_example(line, f"{path}:{number}") for number, line in enumerate(file, 1) if line.strip()]
    if not examples:
        raise ValueError(f"{path} holds no HellaSwag examples")
    return examples


def scoring_rows(tokenizer, examples: list[dict], context_length: int) -> list[tuple[int, int, list[int], int]]:
    """(example index, ending index, token ids of ctx + " " + ending cut from the left to context_length + 1,
    number of ending tokens) for every ending."""
    rows = []
    for example_index, example in enumerate(examples):
        context_ids = tokenizer.encode(example["ctx"]) or [tokenizer.eot_id]
        for ending_index, ending in enumerate(example["endings"]):
            ending_ids = tokenizer.encode(" " + ending)
            token_ids = (context_ids + ending_ids)[-(context_length + 1) :]
            rows.append((example_index, ending_index, token_ids, min(len(ending_ids), len(token_ids) - 1)))
    return rows


def evaluate_hellaswag(model: torch.nn.Module, tokenizer, examples: list[dict], *, batch_size: int,
                       device: torch.device | str, limit: int | None = None) -> dict:
    """{"acc", "acc_norm", "n"} on the first `limit` examples; `batch_size` counts endings per forward pass."""
    examples = examples[:limit] if limit is not None else examples
    if not examples:
        raise ValueError("no HellaSwag examples to score (empty file or --limit 0)")
    rank, world_size = rank_and_world_size()
    my_examples = examples[rank::world_size]
    rows = scoring_rows(tokenizer, my_examples, model.config.context_length)
    scores, _ = score_rows(model, rows, batch_size=batch_size, device=device, desc="hellaswag",
                           show_progress=rank == 0)
    ending_scores = [[0.0] * len(example["endings"]) for example in my_examples]
    for (example_index, ending_index, _, _), score in zip(rows, scores, strict=True):
        ending_scores[example_index][ending_index] = score
    num_correct = num_correct_norm = 0
    for example, sums in zip(my_examples, ending_scores, strict=True):
        # acc_norm divides by the ending's UTF-8 bytes: it removes the bias toward short endings.
        ending_bytes = [max(len(ending.encode("utf-8")), 1) for ending in example["endings"]]
        num_correct += int(np.argmax(sums)) == example["label"]
        num_correct_norm += int(np.argmax(np.array(sums) / ending_bytes)) == example["label"]
    num_correct, num_correct_norm, count = sum_over_ranks([num_correct, num_correct_norm, len(my_examples)], device)
    return {"acc": num_correct / count, "acc_norm": num_correct_norm / count, "n": int(count)}
