"""Training on a CUDA GPU: fp32 matches the CPU, bf16 + torch.compile learns and checkpoints, evaluation of
the result agrees across devices, and torchrun's launch takes the GPU (skipped without a GPU). One process
never shards, so FSDP2 itself needs two GPUs: tests/train/test_train_distributed.py runs it on CPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from train_helpers import TINY_MODEL, run_command

from gpt25.checkpoint import load_model
from gpt25.data.shards import load_split
from gpt25.eval.loss import evaluate_loss
from gpt25.tokenizer import Tokenizer
from gpt25.train import train
from gpt25.train.tracking import read_metrics

pytestmark = pytest.mark.cuda


def losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["train_loss"] for row in read_metrics(run_dir) if "train_loss" in row}


def test_fp32_training_on_cuda_follows_the_cpu_run(tiny_config, tmp_path: Path) -> None:
    train(tiny_config(tmp_path / "reference", train_steps=6))
    train(tiny_config(tmp_path / "gpu", train_steps=6, device="cuda"))
    on_cpu, on_cuda = losses(tmp_path / "reference"), losses(tmp_path / "gpu")
    assert list(on_cuda) == list(on_cpu) == [1, 2, 3, 4, 5, 6]
    for step in on_cpu:
        assert on_cuda[step] == pytest.approx(on_cpu[step], rel=1e-3), step


def test_bf16_compiled_training_on_cuda_learns_and_its_checkpoint_evaluates_alike(
        tiny_config, corpus_data: dict[str, Path], tmp_path: Path) -> None:
    summary = train(tiny_config(tmp_path / "run", train_steps=30, device="cuda", dtype="bfloat16", compile="on"))
    curve = losses(tmp_path / "run")
    assert summary["step"] == 30 and summary["memory_gb"] > 0
    assert sum(list(curve.values())[-5:]) / 5 < curve[1] - 0.3  # 6.20 -> 5.75 in the CPU fp32 run
    tokenizer = Tokenizer.load(corpus_data["tokenizer"])
    tokens = load_split(corpus_data["data"], "val", tokenizer)
    results = []
    for device in ("cpu", "cuda"):
        model, _ = load_model(tmp_path / "run", device=device)
        results.append(evaluate_loss(model, tokens, tokenizer, batch_size=8, context_length=32, device=device,
                                     max_tokens=2048))
    assert results[1]["tokens"] == results[0]["tokens"] == 2048
    assert results[1]["val_loss"] == pytest.approx(results[0]["val_loss"], rel=1e-4)
    assert results[1]["val_loss"] == pytest.approx(summary["final_val_loss"], rel=2e-2)  # trained in bf16


def test_torchrun_on_one_gpu_matches_the_plain_run(tiny_config, corpus_data: dict[str, Path],
                                                               tmp_path: Path) -> None:
    train(tiny_config(tmp_path / "plain", train_steps=6, device="cuda"))
    run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                 "-m", "gpt25", "train", "--data", str(corpus_data["data"]), "--tokenizer",
                 str(corpus_data["tokenizer"]), "--out", str(tmp_path / "launched"), "--device", "cuda", "--seed", "0",
                 "--batch_size", "8", "--lr", "3e-3", "--warmup_steps", "2", "--eval_every", "0", "--eval_steps",
                 "4", "--log_every", "1", "--train_steps", "6", *TINY_MODEL])
    plain, launched = losses(tmp_path / "plain"), losses(tmp_path / "launched")
    assert list(launched) == list(plain) == [1, 2, 3, 4, 5, 6]
    for step in plain:
        assert launched[step] == pytest.approx(plain[step], rel=1e-5), step
    assert json.loads((tmp_path / "launched" / "config.json").read_text())["device"] == "cuda:0"
