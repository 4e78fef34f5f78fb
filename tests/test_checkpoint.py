"""gpt25.checkpoint's file handling: damaged files are one-line errors that name the file and another
checkpoint, safetensors files get the usual umask-based mode (safetensors creates them 0600), and any
module (not only a TransformerLM) saves and loads."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gpt25.checkpoint import consolidate, find_tokenizer_dir, load_checkpoint, load_model, make_meta, save_checkpoint
from gpt25.model import ModelConfig, TransformerLM
from gpt25.model.layers import Linear
from gpt25.optim import AdamW
from gpt25.tokenizer import Tokenizer

CONFIG = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=1, num_heads=2, d_ff=64)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run dir with two complete checkpoints, steps 1 and 2 (with optimizer state)."""
    torch.manual_seed(0)
    model = TransformerLM(CONFIG)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    for step in (1, 2):
        save_checkpoint(model, optimizer, step, tmp_path / "run" / "checkpoints" / f"step_000000{step}")
    return tmp_path / "run"


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("file", "damage", "detail"),
    [
        ("model.safetensors", lambda data: data[:100], "Error while deserializing header: invalid header length"),
        ("model.safetensors", truncate, "Error while deserializing header: incomplete metadata"),
        ("train_state.pt", truncate, "PytorchStreamReader failed reading zip archive: failed finding central"),
        ("train_state.pt", lambda data: b"", "EOFError"),
        ("meta.json", lambda data: b"{" + data, "Expecting property name enclosed in double quotes: line 1 column 2"),
    ],
)
def test_resuming_from_a_damaged_file_names_it_and_the_previous_checkpoint(
    run: Path, file: str, damage: Callable[[bytes], bytes], detail: str
) -> None:
    damaged = run / "checkpoints" / "step_0000002" / file
    damaged.write_bytes(damage(damaged.read_bytes()))
    model = TransformerLM(CONFIG)
    with pytest.raises(ValueError) as error:
        load_checkpoint(run, model, AdamW(model.parameters(), lr=1e-3))
    message = str(error.value)
    assert message.startswith(f"{damaged} is damaged ({detail}")
    assert message.endswith(f"); use another checkpoint, e.g. --checkpoint {run / 'checkpoints' / 'step_0000001'}")
    assert "\n" not in message
    assert load_checkpoint(run / "checkpoints" / "step_0000001", model) == 1  # the suggestion works


def test_a_damaged_consolidated_file_is_named_without_a_run_to_point_at(run: Path, tmp_path: Path) -> None:
    weights = consolidate(run, tmp_path / "model.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors is damaged \(Error while deserializing header: "
                                         r"invalid header length\); use another checkpoint, or write this one again$"):
        load_model(weights)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_safetensors_files_get_the_umask_mode(run: Path, tmp_path: Path, umask: int) -> None:
    old_umask = os.umask(umask)
    try:
        shutil.rmtree(run)
        step = save_checkpoint(TransformerLM(CONFIG), None, 3, run / "checkpoints" / "step_0000003")
        weights = consolidate(run, tmp_path / "model.safetensors")
    finally:
        os.umask(old_umask)
    files = [*step.iterdir(), weights, weights.with_suffix(".json")]
    modes = {path.name: path.stat().st_mode & 0o777 for path in files}
    expected = 0o666 & ~umask
    assert modes == {"meta.json": expected, "model.safetensors": expected, "train_state.pt": expected,
                     "model.json": expected}


def trained_module_and_optimizer(seed: int) -> tuple[torch.nn.Module, AdamW]:
    """A module that is no TransformerLM (two of gpt25's Linear layers) and an AdamW after two steps."""
    torch.manual_seed(seed)
    module = torch.nn.Sequential(Linear(4, 8), Linear(8, 3))
    optimizer = AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        module(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return module, optimizer


def test_any_module_saves_and_loads_weights_optimizer_state_and_iteration(tmp_path: Path) -> None:
    """The CS336 call shape: save_checkpoint(model, optimizer, iteration, out),
    load_checkpoint(src, model, optimizer) -> iteration, for any nn.Module (no config)."""
    module, optimizer = trained_module_and_optimizer(seed=0)
    out = tmp_path / "checkpoint.pt"
    save_checkpoint(module, optimizer, 7, out)
    fresh, fresh_optimizer = trained_module_and_optimizer(seed=1)
    assert load_checkpoint(out, fresh, fresh_optimizer) == 7
    for name, tensor in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    assert saved["state"].keys() == loaded["state"].keys() == {0, 1}
    for index, values in saved["state"].items():
        assert values.keys() == loaded["state"][index].keys()
        for key, value in values.items():
            assert torch.equal(torch.as_tensor(loaded["state"][index][key]), torch.as_tensor(value)), (index, key)


def test_a_module_without_a_config_is_refused_by_load_model_with_a_hint(tmp_path: Path) -> None:
    module, optimizer = trained_module_and_optimizer(seed=0)
    step_dir = save_checkpoint(module, optimizer, 1, tmp_path / "step_0000001")
    with pytest.raises(ValueError, match=r"holds a module other than a TransformerLM \(no model config\); "
                                         r"load it into that module with load_checkpoint$"):
        load_model(step_dir)


def test_the_tokenizer_is_found_beside_the_run_else_where_training_recorded_it(tmp_path: Path) -> None:
    tokenizer = Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"])  # its fit to the model is not checked here
    recorded = tmp_path / "tok"
    tokenizer.save(recorded)
    step_dir = tmp_path / "run" / "checkpoints" / "step_0000002"
    model = TransformerLM(CONFIG)
    save_checkpoint(model, None, 2, step_dir, meta=make_meta(2, CONFIG, train_config={"tokenizer": str(recorded)}))
    assert find_tokenizer_dir(tmp_path / "run") == find_tokenizer_dir(step_dir) == recorded
    tokenizer.save(tmp_path / "run" / "tokenizer")
    assert find_tokenizer_dir(tmp_path / "run") == find_tokenizer_dir(step_dir) == tmp_path / "run" / "tokenizer"
    consolidated = consolidate(step_dir, tmp_path / "model.safetensors")
    recorded.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="no tokenizer found for .*model.safetensors"):
        find_tokenizer_dir(consolidated)
