"""`gpt25 sft` on a tiny base model: it lowers the held-out assistant loss, saves the extended tokenizer,
resumes bit-identically, and refuses bad input with one line."""

from __future__ import annotations

import json
import shutil
from itertools import islice
from pathlib import Path

import pytest

from gpt25.checkpoint import list_checkpoints, load_for_inference
from gpt25.cli import main
from gpt25.data.default_corpus import iter_chat_set
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.chat_format import has_chat_tokens
from gpt25.train import train
from gpt25.train.config import SFTConfig
from gpt25.train.distributed import init_distributed
from gpt25.train.sft import FineTuning, sft
from gpt25.train.tracking import read_metrics
from gpt25.train.trainer import Trainer


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, corpus_data) -> Path:
    """A tiny base model (context 96) trained for a few steps."""
    from gpt25.train import TrainConfig

    out = tmp_path_factory.mktemp("base") / "run"
    train(TrainConfig(data=str(corpus_data["data"]), tokenizer=str(corpus_data["tokenizer"]), out=str(out),
                      d_model=32, num_layers=2, num_heads=2, d_ff=64, context_length=96, batch_size=8,
                      train_steps=10, lr=3e-3, warmup_steps=2, eval_every=0, eval_steps=2, log_every=5,
                      device="cpu", seed=0))
    return out


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    """The first 400 conversations of the embedded chat set as JSONL."""
    path = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in islice(iter_chat_set(), 400)))
    return path


def sft_config(base_run: Path, corpus_data, chats: Path, out: Path, **overrides) -> SFTConfig:
    settings = dict(checkpoint=str(base_run), tokenizer=str(corpus_data["tokenizer"]), data=str(chats), out=str(out),
                    batch_size=8, train_steps=12, lr=3e-3, warmup_steps=2, eval_every=0, eval_steps=4,
                    save_every=6, log_every=1, val_fraction=0.1, device="cpu", seed=0)
    return SFTConfig(**(settings | overrides))


def test_sft_lowers_the_held_out_assistant_loss_and_saves_a_chat_tokenizer(base_run, corpus_data, chats,
                                                                             tmp_path) -> None:
    trainer = Trainer(sft_config(base_run, corpus_data, chats, tmp_path / "sft", train_steps=40),
                      init_distributed("cpu"), FineTuning())
    before = trainer.task.evaluate(trainer)
    summary = trainer.run()
    assert summary["final_val_loss"] < before["val_loss"] - 0.5
    assert 0 < summary["val_accuracy"] <= 1 and summary["conversations"] == 400
    tokenizer = Tokenizer.load(tmp_path / "sft" / "tokenizer")
    assert has_chat_tokens(tokenizer) and tokenizer.vocab_size == 515
    model, _, _ = load_for_inference(tmp_path / "sft", tokenizer)  # the run's checkpoint fits its tokenizer
    assert model.config.vocab_size == 515 and model.config.context_length == 96


def test_resume_repeats_the_same_losses(base_run, corpus_data, chats, tmp_path) -> None:
    sft(sft_config(base_run, corpus_data, chats, tmp_path / "whole"))
    whole = {row["step"]: row["train_loss"] for row in read_metrics(tmp_path / "whole") if "train_loss" in row}
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    shutil.rmtree(list_checkpoints(tmp_path / "resumed")[-1])  # back to the step-6 checkpoint
    summary = sft(sft_config(base_run, corpus_data, chats, tmp_path / "resumed", checkpoint="latest", tokenizer=""))
    assert summary["start_step"] == 6 and summary["step"] == 12
    resumed = {row["step"]: row["train_loss"] for row in read_metrics(tmp_path / "resumed") if "train_loss" in row}
    assert resumed == whole


def test_decay_all_puts_every_parameter_in_one_decayed_group(base_run, corpus_data, chats, tmp_path) -> None:
    for decay_all, num_groups in ((False, 2), (True, 1)):
        trainer = Trainer(sft_config(base_run, corpus_data, chats, tmp_path / "sft", decay_all=decay_all,
                                     weight_decay=0.1), init_distributed("cpu"), FineTuning())
        groups = trainer.optimizer.param_groups
        assert len(groups) == num_groups and groups[0]["weight_decay"] == 0.1


def test_the_tokenizer_defaults_to_the_base_runs(base_run, corpus_data, chats, tmp_path) -> None:
    trainer = Trainer(sft_config(base_run, corpus_data, chats, tmp_path / "sft", tokenizer=""),
                      init_distributed("cpu"), FineTuning())
    base = Tokenizer.load(corpus_data["tokenizer"])
    assert trainer.tokenizer.vocab_size == base.vocab_size + 3


def test_epochs_set_the_steps(base_run, corpus_data, chats, tmp_path) -> None:
    summary = sft(sft_config(base_run, corpus_data, chats, tmp_path / "sft", train_steps=0, epochs=0.5,
                             context_length=64))
    assert 0.5 <= summary["epochs"] < 0.5 + 8 / 100 and summary["cut"] > 0


def cli_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    return error


def test_bad_input_is_one_line_and_writes_nothing(base_run, corpus_data, chats, tmp_path, capsys,
                                                   monkeypatch) -> None:
    common = ["--tokenizer", str(corpus_data["tokenizer"]), "--device", "cpu", "--train_steps", "2"]
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "no reply"}]}) + "\n")
    assert "no usable conversation" in cli_error(capsys, "--checkpoint", str(base_run), "--data", str(bad),
                                                 "--out", str(out), *common)
    bigger = Tokenizer.load(corpus_data["tokenizer"]).with_special_tokens(["<|a|>", "<|b|>"])
    bigger.save(tmp_path / "bigger")
    error = cli_error(capsys, "--checkpoint", str(base_run), "--data", str(chats), "--out", str(out),
                      "--tokenizer", str(tmp_path / "bigger"), "--device", "cpu")
    assert "tokenizer has 514 tokens but the model's vocab_size is 512" in error
    assert "no checkpoint at" in cli_error(capsys, "--checkpoint", str(tmp_path / "nowhere"), "--data", str(chats),
                                           "--out", str(out), *common)
    assert "no checkpoint in" in cli_error(capsys, "--checkpoint", "latest", "--data", str(chats),
                                           "--out", str(out), *common)
    monkeypatch.setattr("gpt25.data.sources.hub_offline", lambda: True)
    hub = cli_error(capsys, "--checkpoint", str(base_run), "--data", "hf:HuggingFaceTB/smol-smoltalk", "--out",
                    str(out), *common)
    local = cli_error(capsys, "--checkpoint", str(base_run), "--data", "python-docs", "--out", str(out), *common)
    assert "needs the internet and offline mode is on" in hub and "--data 'python-docs' matched no files" in local
    for error in (hub, local):  # each hint names sft's own flags and its embedded set
        assert "--data python-docs-chat" in error and "--source" not in error and "--text_field" not in error
    assert not out.exists()


@pytest.mark.slow
def test_fsdp_two_ranks_fine_tune_and_resume_in_one_process(base_run, corpus_data, chats, tmp_path) -> None:
    import sys

    from train_helpers import run_command

    out = tmp_path / "fsdp"
    run_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                 "gpt25", "sft", "--checkpoint", str(base_run), "--tokenizer", str(corpus_data["tokenizer"]),
                 "--data", str(chats), "--out", str(out), "--device", "cpu", "--batch_size", "4",
                 "--train_steps", "4", "--save_every", "4", "--eval_every", "4", "--eval_steps", "2",
                 "--lr", "3e-3", "--parallel", "fsdp", "--seed", "0", "--val_fraction", "0.1"])
    rows = read_metrics(out)
    assert [row["step"] for row in rows if "train_loss" in row] == [4]
    assert any("val_accuracy" in row for row in rows)
    summary = sft(sft_config(base_run, corpus_data, chats, out, checkpoint="latest", tokenizer="", train_steps=6))
    assert summary["start_step"] == 4 and summary["step"] == 6
