"""Checkpoint files: round trip, weights_only loading, rotation, consolidation, refusal to resume
into another model shape or tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt25.checkpoint import (
    check_compatible,
    consolidate,
    list_checkpoints,
    load_checkpoint,
    load_model,
    make_meta,
    read_meta,
    remove_old_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, cross_entropy

CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=64)


def trained_model(seed: int = 0) -> tuple[TransformerLM, AdamW]:
    torch.manual_seed(seed)
    model = TransformerLM(CONFIG)
    optimizer = AdamW(parameter_groups(model, 0.1), lr=1e-2, betas=(0.9, 0.95))
    tokens = torch.randint(0, 64, (4, 17))
    for _ in range(2):
        cross_entropy(model(tokens[:, :-1]), tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_step(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    path = save_checkpoint(model, optimizer, 42, tmp_path / "checkpoints" / "step_0000042")
    assert sorted(item.name for item in path.iterdir()) == ["meta.json", "model.safetensors", "train_state.pt"]
    torch.load(path / "train_state.pt", weights_only=True)  # no pickled objects inside
    meta = json.loads((path / "meta.json").read_text())
    summary = (meta["format"], meta["step"], meta["model_config"]["d_model"], meta["sharded"])
    assert summary == ("gpt25-checkpoint", 42, 32, False)

    fresh, fresh_optimizer = trained_model(seed=1)
    assert load_checkpoint(tmp_path, fresh, fresh_optimizer) == 42  # a run dir resolves to its newest checkpoint
    for (name, expected), actual in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(expected, actual), name
    for expected, actual in zip(optimizer.state.values(), fresh_optimizer.state.values(), strict=True):
        assert expected["step"] == actual["step"] == 2
        assert torch.equal(expected["exp_avg_sq"], actual["exp_avg_sq"])
    # one more identical update from both gives identical weights: the optimizer state is complete
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(5))
    for each_model, each_optimizer in ((model, optimizer), (fresh, fresh_optimizer)):
        cross_entropy(each_model(tokens[:, :-1]), tokens[:, 1:]).backward()
        each_optimizer.step()
    assert torch.equal(model.lm_head.weight, fresh.lm_head.weight)


def test_load_model_from_step_dir_run_dir_and_consolidated_file(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    step_dir = save_checkpoint(model, optimizer, 7, tmp_path / "run" / "checkpoints" / "step_0000007")
    out = consolidate(tmp_path / "run", tmp_path / "final.safetensors")
    assert json.loads(out.with_suffix(".json").read_text())["step"] == 7
    tokens = torch.randint(0, 64, (2, 16))
    expected = model.eval()(tokens)
    for source in (step_dir, tmp_path / "run", out):
        loaded, meta = load_model(source, dtype=torch.float64)
        assert meta["step"] == 7 and loaded.lm_head.weight.dtype == torch.float64 and not loaded.training
        torch.testing.assert_close(loaded(tokens).float(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nowhere")


def test_rotation_keeps_newest_and_ignores_unfinished(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    for step in (1, 2, 3, 4):
        save_checkpoint(model, optimizer, step, tmp_path / "checkpoints" / f"step_{step:07d}")
    (tmp_path / "checkpoints" / ".tmp-step_0000005").mkdir()  # a save killed midway
    (tmp_path / "checkpoints" / "step_0000009").mkdir()  # no meta.json: not a checkpoint
    assert resolve_checkpoint(tmp_path).name == "step_0000004"
    removed = remove_old_checkpoints(tmp_path, keep=2)
    assert [path.name for path in removed] == ["step_0000001", "step_0000002"]
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    assert not (tmp_path / "checkpoints" / ".tmp-step_0000005").exists()
    assert read_meta(tmp_path)["step"] == 4


def test_incompatible_resume_names_every_difference() -> None:
    meta = make_meta(10, CONFIG, tokenizer_fingerprint="a" * 64)
    check_compatible(meta, CONFIG, "a" * 64)
    other = ModelConfig(vocab_size=64, context_length=16, d_model=64, num_layers=3, num_heads=2, d_ff=64)
    with pytest.raises(ValueError) as error:
        check_compatible(meta, other, "b" * 64)
    message = str(error.value)
    assert "\n" not in message
    assert "d_model (checkpoint 32, now 64)" in message and "num_layers (checkpoint 2, now 3)" in message
    assert "tokenizer" in message and "vocab_size" not in message
