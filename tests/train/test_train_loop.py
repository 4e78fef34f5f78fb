"""The training loop in this process: it learns, logs, stops on NaN or a signal, and plots."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import pytest

from gpt25.checkpoint import list_checkpoints, load_model
from gpt25.cli import main
from gpt25.train import plot_runs, train
from gpt25.train.tracking import Tracker, read_metrics
from gpt25.train.trainer import TrainingDiverged

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(corpus_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """80 steps of the tiny model with evaluations and checkpoints (shared by the tests below)."""
    from gpt25.train import TrainConfig

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train(TrainConfig(data=str(corpus_data["data"]), tokenizer=str(corpus_data["tokenizer"]), out=str(out),
                             d_model=32, num_layers=2, num_heads=2, d_ff=64, context_length=32, batch_size=8,
                             lr=3e-3, warmup_steps=2, eval_steps=4, log_every=1, device="cpu", seed=0,
                             train_steps=80, eval_every=40, save_every=40, keep_checkpoints=1, tracker="tensorboard"))


def test_training_lowers_the_loss_on_a_real_corpus(trained_run: dict) -> None:
    rows = read_metrics(trained_run["run_dir"])
    train_losses = [row["train_loss"] for row in rows if "train_loss" in row]
    val_losses = [row["val_loss"] for row in rows if "val_loss" in row]
    assert len(train_losses) == 80 and len(val_losses) == 2
    assert train_losses[0] > 6.0  # ~ln(512): uniform over the 512-token vocabulary
    assert sum(train_losses[-10:]) / 10 < train_losses[0] - 1.0
    assert trained_run["final_val_loss"] == val_losses[-1] < 5.3
    assert 1.0 < trained_run["final_val_bpb"] < 5.0
    assert trained_run["step"] == 80 and trained_run["tokens_seen"] == 80 * 8 * 32
    assert trained_run["tokens_per_second"] > 0 and 0 < trained_run["mfu"] < 1


def test_run_dir_has_config_metrics_checkpoint_and_tensorboard(trained_run: dict) -> None:
    run_dir = Path(trained_run["run_dir"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["d_model"] == 32 and config["min_lr"] == pytest.approx(3e-4) and config["parallel"] == "none"
    assert config["derived"]["tokens_per_step"] == 256 and config["derived"]["model"]["vocab_size"] == 512
    row = next(row for row in read_metrics(run_dir) if "train_loss" in row)
    assert {"lr", "grad_norm", "tokens_seen", "tokens_per_second", "mfu"} <= set(row)
    assert [path.name for path in list_checkpoints(run_dir)] == ["step_0000080"]  # keep_checkpoints=1
    assert load_model(run_dir)[1]["step"] == 80
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_plot_writes_a_png_of_several_runs(trained_run: dict, tmp_path: Path) -> None:
    run_dir = Path(trained_run["run_dir"])
    out = plot_runs([run_dir, run_dir], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 20_000
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(run_dir), "--out", str(tmp_path / "cli.png")])
    assert exit_info.value.code == 0 and (tmp_path / "cli.png").read_bytes()[:8] == PNG_SIGNATURE


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "diverging"
    train(tiny_config(out, train_steps=20, save_every=5))
    with pytest.raises(TrainingDiverged) as error:  # resumed at step 20 with an absurd lr, saving every step
        train(tiny_config(out, train_steps=40, lr=1e12, max_grad_norm=0.0, save_every=1, checkpoint="latest"))
    nan_step = int(re.search(r"loss became nan at step (\d+)", str(error.value)).group(1))
    last_good = list_checkpoints(out)[-1]
    assert 20 < nan_step < 40 and last_good.name == f"step_{nan_step - 1:07d}"
    assert f"last good checkpoint {last_good} is kept" in str(error.value)
    assert load_model(out)[1]["step"] == nan_step - 1


def test_resumed_tracker_forgets_rows_past_the_checkpoint(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path)
    for step in range(1, 6):
        tracker.log(step, {"train_loss": 1.0 / step})
    tracker.close()
    Tracker(tmp_path, resume_step=3).close()
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_stops_cleanly(signal_number: int, tmp_path: Path, tiny_config) -> None:
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal_number))
    timer.start()
    try:
        summary = train(tiny_config(tmp_path / "run", train_steps=100_000, warmup_steps=10))
    finally:
        timer.cancel()
    assert summary["stopped_by"] == signal.Signals(signal_number).name
    assert 0 < summary["step"] < 100_000
    assert list_checkpoints(tmp_path / "run")[-1].name == f"step_{summary['step']:07d}"


@pytest.mark.slow
def test_wandb_tracker_runs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = Tracker(tmp_path, "wandb", {"lr": 1e-3})
    tracker.log(1, {"train_loss": 2.0})
    tracker.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert read_metrics(tmp_path) == [{"step": 1, "train_loss": 2.0}]
