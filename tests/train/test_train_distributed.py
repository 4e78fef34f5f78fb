"""Two CPU processes under real torchrun (gloo): FSDP2 and DDP match one process on the same global
batch, and a sharded FSDP checkpoint resumes in one process and consolidates to one file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_MODEL, run_command

from gpt25.checkpoint import list_checkpoints, load_model, read_meta
from gpt25.cli import main
from gpt25.train import train
from gpt25.train.tracking import read_metrics

STEPS = ["--train_steps", "6", "--save_every", "3", "--eval_every", "6"]


def losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["train_loss"] for row in read_metrics(run_dir) if "train_loss" in row}


@pytest.fixture(scope="module")
def single_run(corpus_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, batch 8 (= 2 ranks x 4)."""
    from gpt25.train import TrainConfig

    out = tmp_path_factory.mktemp("single") / "run"
    train(TrainConfig(data=str(corpus_data["data"]), tokenizer=str(corpus_data["tokenizer"]), out=str(out),
                      d_model=32, num_layers=2, num_heads=2, d_ff=64, context_length=32, batch_size=8, lr=3e-3,
                      warmup_steps=2, eval_every=6, eval_steps=4, log_every=1, device="cpu", seed=0,
                      train_steps=6, save_every=3))
    return out


@pytest.fixture(scope="module")
def fsdp_run(corpus_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    run_command(two_rank_command(corpus_data, out, "--parallel", "fsdp"))
    return out


def two_rank_command(corpus_data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """torchrun with 2 CPU ranks of batch 4 each: the same global batch as `single_run`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gpt25",
            "train", "--data", str(corpus_data["data"]), "--tokenizer", str(corpus_data["tokenizer"]),
            "--out", str(out), "--device", "cpu", "--seed", "0", "--batch_size", "4", "--lr", "3e-3",
            "--warmup_steps", "2", "--eval_steps", "4", "--log_every", "1", *TINY_MODEL, *STEPS, *extra]


def test_fsdp_two_ranks_match_one_process(fsdp_run: Path, single_run: Path) -> None:
    sharded, reference = losses(fsdp_run), losses(single_run)
    assert list(sharded) == list(reference) == [1, 2, 3, 4, 5, 6]
    for step in reference:
        assert sharded[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    assert reference[6] < reference[1]
    val = [row["val_loss"] for row in read_metrics(fsdp_run) if "val_loss" in row]
    assert val == pytest.approx([row["val_loss"] for row in read_metrics(single_run) if "val_loss" in row], rel=1e-5)
    meta = read_meta(fsdp_run)
    assert meta["sharded"] and meta["world_size"] == 2 and (Path(list_checkpoints(fsdp_run)[-1]) / "dcp").is_dir()
    assert json.loads((fsdp_run / "config.json").read_text())["derived"]["world_size"] == 2


def test_fsdp_checkpoint_resumes_in_one_process(fsdp_run: Path, tmp_path: Path, tiny_config) -> None:
    run_dir = tmp_path / "resumed"
    shutil.copytree(fsdp_run, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_0000006")
    summary = train(tiny_config(run_dir, batch_size=8, train_steps=6, eval_every=6, checkpoint="latest"))
    assert summary["start_step"] == 3 and summary["step"] == 6
    resumed, original = losses(run_dir), losses(fsdp_run)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(original[step], rel=1e-5, abs=1e-6), step
    assert not read_meta(run_dir)["sharded"]  # one process writes the single-file layout


def test_consolidate_a_sharded_checkpoint(fsdp_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["checkpoint", "consolidate", str(fsdp_run), "--out", str(out)])
    assert exit_info.value.code == 0
    consolidated, meta = load_model(out)
    sharded, _ = load_model(fsdp_run)
    assert meta["step"] == 6 and meta["sharded"] is False
    for name, tensor in sharded.state_dict().items():
        assert torch.equal(tensor, consolidated.state_dict()[name]), name
    with pytest.raises(SystemExit):
        main(["checkpoint", "info", str(fsdp_run)])
    assert '"world_size": 2' in capsys.readouterr().out


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process(corpus_data: dict[str, Path], single_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    run_command(two_rank_command(corpus_data, out, "--parallel", "ddp"))
    for step, loss in losses(single_run).items():
        assert losses(out)[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert not read_meta(out)["sharded"] and read_meta(out)["world_size"] == 2


@pytest.fixture(scope="module")
def gpt2_single_run(corpus_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`single_run` with the GPT-2 preset: tied head, learned positions, biases, LayerNorm."""
    from gpt25.train import TrainConfig

    out = tmp_path_factory.mktemp("gpt2_single") / "run"
    train(TrainConfig(data=str(corpus_data["data"]), tokenizer=str(corpus_data["tokenizer"]), out=str(out),
                      arch="gpt2", d_model=32, num_layers=2, num_heads=2, d_ff=64, context_length=32, batch_size=8,
                      lr=3e-3, warmup_steps=2, eval_every=6, eval_steps=4, log_every=1, device="cpu", seed=0,
                      train_steps=6, save_every=3))
    return out


@pytest.mark.slow
def test_gpt2_preset_under_fsdp_matches_one_process_and_resumes(corpus_data: dict[str, Path], tmp_path: Path,
                                                                 gpt2_single_run: Path, tiny_config) -> None:
    """GPT-2's tied head and learned positions live in FSDP's root unit; the sharded checkpoint holds the
    tied matrix once and resumes in one process with the same losses."""
    sharded = tmp_path / "fsdp"
    run_command(two_rank_command(corpus_data, sharded, "--parallel", "fsdp", "--arch", "gpt2"))
    for step, loss in losses(gpt2_single_run).items():
        assert losses(sharded)[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert read_meta(sharded)["model_config"]["tie_embeddings"] is True
    model, _ = load_model(sharded)
    assert model.lm_head is None and model.position_embeddings is not None
    shutil.rmtree(sharded / "checkpoints" / "step_0000006")
    summary = train(tiny_config(sharded, arch="gpt2", batch_size=8, train_steps=6, save_every=3, eval_every=6,
                                checkpoint="latest"))
    assert summary["start_step"] == 3
    for step in (4, 5, 6):
        assert losses(sharded)[step] == pytest.approx(losses(gpt2_single_run)[step], rel=1e-5, abs=1e-6), step


@pytest.mark.slow
def test_gpt2_preset_under_ddp_matches_one_process(corpus_data: dict[str, Path], gpt2_single_run: Path,
                                                   tmp_path: Path) -> None:
    """The tied matrix gets its gradient from both the lookup and the head, all-reduced once."""
    out = tmp_path / "ddp"
    run_command(two_rank_command(corpus_data, out, "--parallel", "ddp", "--arch", "gpt2"))
    assert list(losses(out)) == [1, 2, 3, 4, 5, 6]
    for step, loss in losses(gpt2_single_run).items():
        assert losses(out)[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step


def test_muon_under_fsdp_matches_one_process_and_resumes(corpus_data: dict[str, Path], tmp_path: Path,
                                                         tiny_config) -> None:
    """Muon gathers each sharded matrix for its iteration; 2 ranks take the same steps as 1 process, and the
    sharded momentum resumes in one process."""
    muon = ["--optimizer", "muon", "--muon_lr", "0.04", "--schedule", "wsd"]
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    settings = {"train_steps": 6, "save_every": 3, "eval_every": 6, "optimizer": "muon", "muon_lr": 0.04,
                "schedule": "wsd"}
    train(tiny_config(single, **settings))
    run_command(two_rank_command(corpus_data, sharded, "--parallel", "fsdp", *muon))
    assert list(losses(sharded)) == [1, 2, 3, 4, 5, 6] and losses(single)[6] < losses(single)[1]
    for step, loss in losses(single).items():
        assert losses(sharded)[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    shutil.rmtree(sharded / "checkpoints" / "step_0000006")
    train(tiny_config(sharded, checkpoint="latest", **settings))
    for step in (4, 5, 6):
        assert losses(sharded)[step] == pytest.approx(losses(single)[step], rel=1e-5, abs=1e-6), step
