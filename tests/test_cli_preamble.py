"""The one preamble of the commands that load a model (generate, chat, serve, eval, export): the run's own
tokenizer by default, the device and dtype resolved, and a missing path refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt25.checkpoint import make_meta, save_checkpoint, step_dir_name
from gpt25.cli import build_parser, main
from gpt25.cli.flags import model_inputs
from gpt25.model import ModelConfig, TransformerLM
from gpt25.tokenizer import Tokenizer

MODEL_COMMANDS = (["generate"], ["chat"], ["serve"], ["eval"], ["export", "hf", "--out", "x"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run as `gpt25 train` leaves it: checkpoints/step_0000001 and the run's tokenizer/ beside them."""
    run = tmp_path_factory.mktemp("run")
    tokenizer = Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"])
    tokenizer.save(run / "tokenizer")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=16, d_model=16, num_layers=1, num_heads=2,
                         d_ff=32)
    torch.manual_seed(0)
    save_checkpoint(TransformerLM(config), None, 1, run / "checkpoints" / step_dir_name(1),
                    meta=make_meta(1, config, tokenizer_fingerprint=tokenizer.fingerprint()))
    return run


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda command: command[0])
def test_every_model_command_defaults_to_the_runs_tokenizer(run_dir: Path, command: list[str]) -> None:
    args = build_parser().parse_args([*command, "--checkpoint", str(run_dir)])
    checkpoint, tokenizer, device, dtype = model_inputs(args)
    assert (checkpoint, tokenizer) == (str(run_dir), str(run_dir / "tokenizer"))
    if command[0] == "export":  # export writes on the CPU, in float32 unless --dtype says otherwise
        assert (device.type, dtype) == ("cpu", torch.float32)


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda command: command[0])
def test_a_missing_checkpoint_or_tokenizer_is_one_line(run_dir: Path, tmp_path: Path, command: list[str]) -> None:
    parser = build_parser()
    with pytest.raises(FileNotFoundError, match=r"^checkpoint .*nowhere not found; pass a run dir"):
        model_inputs(parser.parse_args([*command, "--checkpoint", str(tmp_path / "nowhere")]))
    with pytest.raises(FileNotFoundError, match=r"^tokenizer folder .*notok not found"):
        model_inputs(parser.parse_args([*command, "--checkpoint", str(run_dir), "--tokenizer", str(tmp_path / "notok")]))


def test_export_hf_without_tokenizer_writes_the_runs_tokenizer(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "hf", "--checkpoint", str(run_dir), "--out", str(tmp_path / "hf")])
    assert exit_info.value.code == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 256
