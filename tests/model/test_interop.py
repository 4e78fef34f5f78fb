"""gpt25.interop and `gpt25 export`: a random model exported to transformers gives the same logits, and back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt25.checkpoint import consolidate, load_model, save_checkpoint
from gpt25.interop import (
    export_hf,
    halves_to_interleaved,
    import_hf,
    interleaved_to_halves,
    upload_to_hub,
)
from gpt25.model import ModelConfig, TransformerLM

CONFIG = ModelConfig(vocab_size=260, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=96, rope_theta=500.0)


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    torch.manual_seed(0)
    model = TransformerLM(CONFIG).eval()
    with torch.no_grad():  # non-trivial norm gains so a mixed-up norm name would show
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    tokenizer_module = pytest.importorskip("gpt25.tokenizer")
    vocab = {index: bytes([index]) for index in range(256)} | {256: b"he", 257: b"hel"}
    tokenizer = tokenizer_module.Tokenizer(vocab, [(b"h", b"e"), (b"he", b"l")], ["<|endoftext|>"])
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(folder)
    return folder


@pytest.fixture(scope="module")
def exported(model: TransformerLM, tokenizer_dir: Path, tmp_path_factory) -> Path:
    return export_hf(model, tokenizer_dir, tmp_path_factory.mktemp("export") / "hf")


def test_rope_permutation_round_trips() -> None:
    weight = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)
    halves = interleaved_to_halves(weight, num_heads=2)
    # Head 0 rows 0..3 = pairs (0,1),(2,3) -> halves: rows 0, 2 then 1, 3.
    assert halves[:4, 0].tolist() == [0.0, 6.0, 3.0, 9.0]
    assert torch.equal(halves_to_interleaved(halves, num_heads=2), weight)


@pytest.mark.slow  # importing transformers' Llama pulls in torch._dynamo: 15-50 s on a busy 2-core machine
def test_export_gives_identical_logits_in_transformers(model: TransformerLM, exported: Path) -> None:
    transformers = pytest.importorskip("transformers")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        path.name for path in exported.iterdir()
    }
    hf_model = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    ids = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.context_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids)
        actual = hf_model(ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_exported_tokenizer_matches_ours(tokenizer_dir: Path, exported: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from gpt25.tokenizer import Tokenizer

    ours = Tokenizer.load(tokenizer_dir)
    theirs = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
    text = "hello there<|endoftext|>help"
    assert theirs.encode(text).ids == ours.encode(text)
    assert json.loads((exported / "config.json").read_text())["eos_token_id"] == ours.eot_id


def test_import_back_is_exact(model: TransformerLM, exported: Path) -> None:
    imported, hf_config = import_hf(exported)
    assert imported.config == CONFIG
    assert hf_config["model_type"] == "llama"
    original = model.state_dict()
    assert all(torch.equal(tensor, original[name]) for name, tensor in imported.state_dict().items())
    torch.testing.assert_close(imported.rope.cos, model.rope.cos)


def test_consolidated_file_loads_with_checkpoint_module(model: TransformerLM, tmp_path: Path) -> None:
    path = consolidate(save_checkpoint(model, None, 0, tmp_path / "step_0000000"), tmp_path / "imported.safetensors")
    assert json.loads(path.with_suffix(".json").read_text())["format"] == "gpt25-checkpoint"
    loaded, meta = load_model(path)
    assert loaded.config == CONFIG and meta["model_config"] == CONFIG.to_dict()
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    exported = export_hf(path, None, tmp_path / "from-file")  # a checkpoint path, no tokenizer
    assert torch.equal(import_hf(exported)[0].lm_head.weight, model.lm_head.weight)


def test_export_refuses_to_overwrite(model: TransformerLM, exported: Path) -> None:
    with pytest.raises(FileExistsError, match="--force"):
        export_hf(model, None, exported)


def test_import_rejects_unsupported_configs(exported: Path, tmp_path: Path) -> None:
    config = json.loads((exported / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 2, "mlp_bias": True}))
    with pytest.raises(ValueError, match="grouped-query attention, biases"):
        import_hf(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        import_hf(tmp_path / "missing")


def test_hub_upload_failure_is_one_line_connection_error(exported: Path, monkeypatch) -> None:
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(ConnectionError, match="could not upload to the Hub repo me/gpt25") as error:
        upload_to_hub(exported, "me/gpt25")
    assert "\n" not in str(error.value)


def test_cli_export_and_import(model: TransformerLM, exported: Path, tmp_path: Path, capsys) -> None:
    from gpt25.cli import main

    out_dir = tmp_path / "back"
    with pytest.raises(SystemExit) as exit_info:
        main(["checkpoint", "import", str(exported), "--out", str(out_dir)])
    assert exit_info.value.code == 0
    assert json.loads((out_dir / "meta.json").read_text())["model_config"] == CONFIG.to_dict()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "hf", "--checkpoint", str(out_dir), "--out", str(tmp_path / "again")])
    assert exit_info.value.code == 0 and (tmp_path / "again" / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "hub-upload", "--dir", str(tmp_path / "nothing"), "--repo", "me/x"])
    assert exit_info.value.code == 2
    assert "gpt25 export: error:" in capsys.readouterr().err


def run_cli(*argv: object) -> int:
    from gpt25.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    return exit_info.value.code


def test_export_refuses_a_tokenizer_the_checkpoint_was_not_trained_with(model, tokenizer_dir, tmp_path, capsys):
    from gpt25.checkpoint import make_meta, save_checkpoint
    from gpt25.tokenizer import Tokenizer

    trained_with = Tokenizer.load(tokenizer_dir)
    step = save_checkpoint(model, None, 1, tmp_path / "run" / "checkpoints" / "step_0000001",
                           meta=make_meta(1, CONFIG, tokenizer_fingerprint=trained_with.fingerprint()))
    other = Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>", "<|pad|>"])
    other.save(tmp_path / "other")
    code = run_cli("export", "hf", "--checkpoint", step, "--tokenizer", tmp_path / "other", "--out", tmp_path / "hf")
    assert code == 2
    assert capsys.readouterr().err == (
        f"gpt25 export: error: tokenizer fingerprint {other.fingerprint()[:12]} differs from the checkpoint's "
        f"{trained_with.fingerprint()[:12]}; pass the tokenizer the model was trained with\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other", "run"]
    byte_vocab = {index: bytes([index]) for index in range(256)}
    larger = Tokenizer(byte_vocab | {256 + i: bytes([97, 98 + i]) for i in range(44)},
                       [(b"a", bytes([98 + i])) for i in range(44)], [])
    larger.save(tmp_path / "larger")
    with pytest.raises(ValueError, match="^tokenizer has 300 tokens but the model's vocab_size is 260; "):
        export_hf(model, tmp_path / "larger", tmp_path / "hf")  # in memory: no fingerprint, the size still counts
    assert export_hf(step, tokenizer_dir, tmp_path / "hf").is_dir()


def test_a_failed_export_leaves_nothing_behind(model, tokenizer_dir, tmp_path, monkeypatch):
    import gpt25.interop

    (tmp_path / "not_a_tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="not_a_tokenizer is not a gpt25 tokenizer folder"):
        export_hf(model, tmp_path / "not_a_tokenizer", tmp_path / "hf")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["not_a_tokenizer"]

    def disk_full(*args, **kwargs) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(gpt25.interop, "save_weights", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_hf(model, tokenizer_dir, tmp_path / "hf")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["not_a_tokenizer"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_safetensors_files_get_the_umask_mode(model, tmp_path, umask):
    import os

    old_umask = os.umask(umask)
    try:
        exported = export_hf(model, None, tmp_path / "hf")
        consolidated = consolidate(save_checkpoint(model, None, 0, tmp_path / "step"), tmp_path / "model.safetensors")
    finally:
        os.umask(old_umask)
    expected = 0o666 & ~umask
    assert (exported / "model.safetensors").stat().st_mode & 0o777 == expected
    assert consolidated.stat().st_mode & 0o777 == expected
