"""Under torch.distributed (2 CPU processes, gloo) the ranks split the work (loss, HellaSwag, CORE) and agree with
one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpt25.eval import evaluate_hellaswag, evaluate_loss
from gpt25.eval.core import CoreTask, evaluate_core

WORLD_SIZE = 2
WORDS = ["cat", "sat", "on", "the", "mat", "dog", "ran", "far", "away", "home"]


def make_examples(count: int) -> list[dict]:
    rng = np.random.default_rng(4)
    return [
        {"ctx": " ".join(rng.choice(WORDS, size=5)),
         "endings": [" ".join(rng.choice(WORDS, size=length)) for length in (1, 2, 3, 4)],
         "label": int(rng.integers(4))}
        for _ in range(count)
    ]


def evaluate_all(model, tokenizer, tokens, examples) -> dict:
    loss = evaluate_loss(model, tokens, tokenizer, batch_size=2, context_length=16, device="cpu")
    hellaswag = evaluate_hellaswag(model, tokenizer, examples, batch_size=3, device="cpu")
    core_tasks = [
        CoreTask("mc", "multiple_choice", 1, " ", 25.0,
                 [{"query": e["ctx"], "choices": e["endings"], "gold": e["label"]} for e in examples]),
        CoreTask("lm", "language_modeling", 2, " ", 0.0,
                 [{"context": e["ctx"], "continuation": e["endings"][0]} for e in examples]),
    ]
    core = evaluate_core(model, tokenizer, core_tasks, batch_size=3, device="cpu")
    return {"loss": loss, "hellaswag": hellaswag, "core": core}


def worker(rank: int, folder: str, model, tokenizer, tokens, examples) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        results = evaluate_all(model, tokenizer, tokens, examples)
    finally:
        dist.destroy_process_group()
    Path(folder, f"rank{rank}.json").write_text(json.dumps(results))


def test_two_ranks_split_the_work_and_all_reduce_the_counts(tmp_path, byte_tokenizer, random_lm) -> None:
    model = random_lm()
    tokens = np.random.default_rng(3).integers(0, 257, size=333).astype(np.uint16)
    examples = make_examples(7)  # odd: the ranks get 4 and 3 examples
    arguments = (str(tmp_path), model, byte_tokenizer, tokens, examples)
    # fork: the children inherit the imported torch and the model, so this takes seconds.
    mp.start_processes(worker, args=arguments, nprocs=WORLD_SIZE, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]
    single = evaluate_all(model, byte_tokenizer, tokens, examples)
    for result in ranks:
        assert result["hellaswag"] == single["hellaswag"] and result["hellaswag"]["n"] == 7
        assert result["core"] == single["core"] and result["core"]["tasks"]["mc"]["n"] == 7
        assert result["loss"]["tokens"] == single["loss"]["tokens"] == 332
        assert result["loss"]["val_loss"] == pytest.approx(single["loss"]["val_loss"], rel=1e-6)
        assert result["loss"]["val_bpb"] == pytest.approx(single["loss"]["val_bpb"], rel=1e-6)
