"""Resume after a real SIGKILL: the resumed run repeats the killed run's per-step losses bit for bit
(float32, CPU), and a kill during a save leaves the previous checkpoint valid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from train_helpers import SUBPROCESS_ENV

from gpt25.checkpoint import list_checkpoints, load_checkpoint, read_meta
from gpt25.model import ModelConfig, TransformerLM
from gpt25.train import train
from gpt25.train.tracking import read_metrics

LONG_RUN = ["--train_steps", "100000", "--warmup_steps", "50"]  # never finishes: it gets killed


def losses_by_step(rows: list[dict]) -> dict[int, float]:
    return {row["step"]: row["train_loss"] for row in rows if "train_loss" in row}


def start(command: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=SUBPROCESS_ENV)


def kill_when(process: subprocess.Popen, ready, log: Path, timeout: float = 90) -> None:
    """SIGKILL the process as soon as ready() is true (polling every few ms), or when waiting fails."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, f"training exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting:\n{log.read_text()}"
            time.sleep(0.002)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()


def last_logged_step(run_dir: Path) -> int:
    try:
        return max(losses_by_step(read_metrics(run_dir)), default=0)
    except FileNotFoundError:
        return 0


def test_sigkill_and_resume_repeats_the_same_losses(tmp_path: Path, train_command) -> None:
    run_dir = tmp_path / "run"
    command = train_command(run_dir, *LONG_RUN, "--save_every", "10")
    killed = start(command, tmp_path / "first.log")
    kill_when(killed, lambda: last_logged_step(run_dir) >= 25, tmp_path / "first.log")
    uninterrupted = losses_by_step(read_metrics(run_dir))
    checkpoint_step = read_meta(run_dir)["step"]
    assert checkpoint_step >= 20 and max(uninterrupted) > checkpoint_step
    (run_dir / "metrics.jsonl").unlink()  # the resumed run's rows alone, from checkpoint_step + 1

    resumed = start(command + ["--checkpoint", "latest"], tmp_path / "second.log")
    kill_when(resumed, lambda: last_logged_step(run_dir) >= max(uninterrupted), tmp_path / "second.log")
    repeated = losses_by_step(read_metrics(run_dir))
    redone = [step for step in uninterrupted if step > checkpoint_step]
    assert min(repeated) == checkpoint_step + 1 and len(redone) >= 5
    assert [repeated[step] for step in redone] == [uninterrupted[step] for step in redone]  # bit-identical
    resumed_from = run_dir / "checkpoints" / f"step_{checkpoint_step:07d}"
    assert f"resumed from {resumed_from}" in (tmp_path / "second.log").read_text()


def test_kill_during_save_leaves_the_last_checkpoint_valid(tmp_path: Path, train_command, tiny_config) -> None:
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    command = train_command(run_dir, *LONG_RUN, "--save_every", "1", "--keep_checkpoints", "2")
    process = start(command, tmp_path / "train.log")
    # Kill the moment a save is in flight (its temporary dir exists, not yet renamed) after a first one completed.
    kill_when(process, lambda: len(list_checkpoints(run_dir)) >= 2 and any(
        path.name.startswith(".tmp-") for path in os.scandir(checkpoints)), tmp_path / "train.log")
    found = list_checkpoints(run_dir)
    assert found, "no complete checkpoint before the kill"
    config = json.loads((run_dir / "config.json").read_text())["derived"]["model"]
    for path in found:  # every checkpoint that looks complete loads
        assert load_checkpoint(path, TransformerLM(ModelConfig.from_dict(config))) == read_meta(path)["step"]
    latest = found[-1]
    summary = train(tiny_config(run_dir, train_steps=read_meta(latest)["step"] + 2, checkpoint="latest"))
    assert summary["start_step"] == read_meta(latest)["step"] and summary["step"] == summary["start_step"] + 2
    assert not [path for path in checkpoints.iterdir() if path.name.startswith(".")]  # leftovers swept
    shutil.rmtree(run_dir)
