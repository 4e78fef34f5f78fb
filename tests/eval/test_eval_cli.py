"""`gpt25 eval` and `gpt25 generate` end to end on a saved tiny checkpoint, and their one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from gpt25.checkpoint import make_meta, save_checkpoint
from gpt25.cli import main
from gpt25.tokenizer import Tokenizer

TEXT = "The cat sat on the mat. The dog ran far away from home, and then it came back again."


@pytest.fixture
def saved(tmp_path, byte_tokenizer, random_lm) -> dict[str, Path]:
    """A tokenizer folder, a run dir with one checkpoint, prepared shards and a HellaSwag file."""
    from gpt25.data.prepare import PrepareConfig, prepare

    byte_tokenizer.save(tmp_path / "tokenizer")
    model = random_lm(context_length=32)
    meta = make_meta(5, model.config, tokenizer_fingerprint=byte_tokenizer.fingerprint())
    step_dir = save_checkpoint(model, None, 5, tmp_path / "run" / "checkpoints" / "step_0000005", meta=meta)
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"{TEXT} Document {index}." for index in range(20)))
    prepare(PrepareConfig(sources=[str(tmp_path / "corpus.txt")], tokenizer_dir=str(tmp_path / "tokenizer"),
                          out_dir=str(tmp_path / "data"), val_docs=4, workers=1, progress=False))
    examples = [{"ctx": "The cat sat on the", "endings": ["mat.", "dog", "away", "then"], "label": 0}] * 3
    (tmp_path / "hellaswag.jsonl").write_text("".join(json.dumps(example) + "\n" for example in examples))
    return {"root": tmp_path, "run": tmp_path / "run", "step": step_dir, "tokenizer": tmp_path / "tokenizer",
            "data": tmp_path / "data", "hellaswag": tmp_path / "hellaswag.jsonl"}


def run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    return exit_info.value.code


def test_eval_writes_eval_json_beside_the_checkpoint_and_prints_a_table(saved, capsys) -> None:
    code = run_cli("eval", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], "--data", saved["data"],
                   "--hellaswag", saved["hellaswag"], "--limit", 2, "--device", "cpu", "--batch_size", 2)
    assert code == 0
    results = json.loads((saved["step"] / "eval.json").read_text())
    assert results["val_loss"] > 0 and results["val_perplexity"] > 1 and results["val_bpb"] > 0
    assert results["val_tokens"] > 0 and results["step"] == 5
    assert results["hellaswag"]["n"] == 2 and set(results["hellaswag"]) == {"acc", "acc_norm", "n"}
    table = capsys.readouterr().out
    assert "val_bpb" in table and "hellaswag_acc_norm" in table and f"{results['val_loss']:.4f}" in table


def test_eval_out_option_and_loss_only(saved) -> None:
    out = saved["root"] / "scores" / "result.json"
    assert run_cli("eval", "--checkpoint", saved["step"], "--tokenizer", saved["tokenizer"], "--data", saved["data"],
                   "--device", "cpu", "--out", out) == 0
    results = json.loads(out.read_text())
    assert results["hellaswag"] is None and results["val_loss"] > 0


def test_eval_of_a_consolidated_file_writes_beside_it(saved) -> None:
    from gpt25.checkpoint import consolidate

    weights = consolidate(saved["run"], saved["root"] / "export" / "model.safetensors")
    assert run_cli("eval", "--checkpoint", weights, "--tokenizer", saved["tokenizer"], "--hellaswag",
                   saved["hellaswag"], "--device", "cpu") == 0
    results = json.loads((saved["root"] / "export" / "model.eval.json").read_text())
    assert results["hellaswag"]["n"] == 3 and results["val_loss"] is None and results["step"] == 5


def test_generate_prints_prompt_and_continuation(saved, capsys, monkeypatch) -> None:
    import gpt25.sample

    static_decode = []
    real_generate = gpt25.sample.generate

    def recording_generate(*args, **kwargs):
        static_decode.append(kwargs["static_decode"])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(gpt25.sample, "generate", recording_generate)
    arguments = ["generate", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], "--prompt", "The cat",
                 "--max_new_tokens", 5, "--num_samples", 2, "--seed", 1, "--device", "cpu"]
    assert run_cli(*arguments) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2 and out.count("The cat") == 2
    assert run_cli(*arguments, "--no_cuda_graph") == 0  # only changes decoding on a GPU
    assert capsys.readouterr().out == out
    assert static_decode == [None, False]  # None: the default, a graph on CUDA


def test_generate_in_bfloat16_loads_bfloat16_weights(saved, capsys, monkeypatch) -> None:
    import gpt25.sample

    dtypes = []
    real_generate = gpt25.sample.generate

    def recording_generate(model, *args, **kwargs):
        dtypes.append(next(model.parameters()).dtype)
        return real_generate(model, *args, **kwargs)

    monkeypatch.setattr(gpt25.sample, "generate", recording_generate)
    code = run_cli("generate", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], "--prompt", "The cat",
                   "--max_new_tokens", 5, "--temperature", 0, "--dtype", "bfloat16", "--device", "cpu")
    assert code == 0 and dtypes == [torch.bfloat16]
    assert capsys.readouterr().out.startswith("The cat")
    assert run_cli("generate", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], "--prompt", "x",
                   "--max_new_tokens", 2, "--device", "cpu") == 0
    assert dtypes[-1] == torch.float32  # the CPU default


def test_generate_streams_one_sample(saved, capsys) -> None:
    code = run_cli("generate", "--checkpoint", saved["step"], "--tokenizer", saved["tokenizer"], "--prompt", "Hi",
                   "--temperature", 0, "--max_new_tokens", 6, "--stream", "--device", "cpu")
    assert code == 0
    assert capsys.readouterr().out.startswith("Hi")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--checkpoint", "{root}/nowhere"], "checkpoint .*nowhere not found"),
        (["--tokenizer", "{root}/small_tokenizer"], "tokenizer has 300 tokens but the model's vocab_size is 272"),
        (["--tokenizer", "{root}/other_tokenizer"], "tokenizer fingerprint .* differs"),
        (["--top_p", "0"], r"top_p must be in \(0, 1\]"),
        (["--top_p", "1.2"], r"top_p must be in \(0, 1\]"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--temperature", "nan"], "temperature must be >= 0 and finite .*, got nan"),
        (["--temperature", "inf"], "temperature must be >= 0 and finite .*, got inf"),
        (["--stream", "--num_samples", "2"], "--stream prints one sample"),
    ],
)
def test_generate_bad_input_is_a_one_line_error(saved, capsys, arguments, message) -> None:
    vocab = {index: bytes([index]) for index in range(256)}
    Tokenizer(vocab | {256 + i: bytes([97, 98 + i]) for i in range(43)}, [(b"a", bytes([98 + i])) for i in range(43)],
              ["<|endoftext|>"]).save(saved["root"] / "small_tokenizer")
    Tokenizer(vocab, [], ["<|endoftext|>", "<|pad|>"]).save(saved["root"] / "other_tokenizer")
    options = {"--checkpoint": str(saved["run"]), "--tokenizer": str(saved["tokenizer"])}
    extra = [argument.format(root=saved["root"]) for argument in arguments]
    for flag in list(options):
        if flag in extra:
            options.pop(flag)
    argv = ["generate", *[item for pair in options.items() for item in pair], *extra, "--device", "cpu"]
    assert run_cli(*argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("gpt25 generate: error: ") and "\n" not in error
    assert re.search(message, error)


def test_eval_without_anything_to_score_is_an_error(saved, capsys) -> None:
    assert run_cli("eval", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], "--device", "cpu") == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert error.startswith(f"gpt25 {command}: error: ") and "\n" not in error
    assert captured.out == ""
    return error.removeprefix(f"gpt25 {command}: error: ")


def test_a_stream_that_fails_validation_prints_nothing_to_stdout(saved, capsys) -> None:
    assert run_cli("generate", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], "--prompt", "Hello",
                   "--stream", "--max_new_tokens", 100, "--device", "cpu") == 2
    assert one_line_error(capsys, "generate") == (
        "the prompt (1 tokens) + max_new_tokens (100) must fit the context of 32 tokens; shorten the prompt or ask "
        "for fewer tokens")


def test_a_stream_that_ends_at_once_still_prints_the_prompt(saved, capsys, monkeypatch) -> None:
    import gpt25.sample

    monkeypatch.setattr(gpt25.sample, "generate", lambda *args, **kwargs: [""])  # nothing streamed
    assert run_cli("generate", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], "--prompt", "Hello",
                   "--stream", "--device", "cpu") == 0
    assert capsys.readouterr().out == "Hello\n"


@pytest.mark.parametrize("command", ["eval", "generate"])
@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("foo", "--device 'foo' is not a device; use cpu, cuda, cuda:N or auto"),
        ("meta", "--device 'meta' is not a device; use cpu, cuda, cuda:N or auto"),
        ("cuda", "--device cuda was asked for but no CUDA GPU is visible; use --device cpu"),
        ("cuda:1", "--device cuda:1 was asked for but no CUDA GPU is visible; use --device cpu"),
    ],
)
def test_an_unavailable_device_is_a_one_line_error(saved, capsys, monkeypatch, command, device, message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = ["--hellaswag", saved["hellaswag"]] if command == "eval" else []
    assert run_cli(command, "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], *extra,
                   "--device", device) == 2
    assert one_line_error(capsys, command) == message


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "{data}", "--max_tokens", "-5"], "--max_tokens must be >= 1, got -5"),
        (["--data", "{data}", "--max_tokens", "0"], "--max_tokens must be >= 1, got 0"),
        (["--hellaswag", "{hellaswag}", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["--data", "{data}", "--limit", "3"],
         "--limit applies to --hellaswag (the number of examples); add --hellaswag or drop --limit"),
        (["--hellaswag", "{hellaswag}", "--max_tokens", "10"],
         "--max_tokens applies to --data (validation tokens); add --data or drop --max_tokens"),
        (["--hellaswag", "{hellaswag}", "--out", "{root}"],
         "--out {root} is a folder; give a file name, e.g. --out {root}/eval.json"),
    ],
)
def test_eval_settings_are_checked_before_any_work(saved, capsys, monkeypatch, arguments, message) -> None:
    import gpt25.eval.run

    monkeypatch.setattr(gpt25.eval.run, "load_for_inference", lambda *args, **kwargs: pytest.fail("loaded the model"))
    before = sorted(saved["root"].iterdir())
    extra = [argument.format(**saved) for argument in arguments]
    assert run_cli("eval", "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], *extra,
                   "--device", "cpu") == 2
    assert one_line_error(capsys, "eval") == message.format(**saved)
    assert sorted(saved["root"].iterdir()) == before  # no temporary file left


def test_eval_json_gets_the_umask_mode_and_a_failed_write_leaves_no_temporary(saved, monkeypatch) -> None:
    import os

    old_umask = os.umask(0o022)
    try:
        assert run_cli("eval", "--checkpoint", saved["step"], "--tokenizer", saved["tokenizer"], "--hellaswag",
                       saved["hellaswag"], "--device", "cpu") == 0
        assert (saved["step"] / "eval.json").stat().st_mode & 0o777 == 0o644
        monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(PermissionError("read-only")))
        assert run_cli("eval", "--checkpoint", saved["step"], "--tokenizer", saved["tokenizer"], "--hellaswag",
                       saved["hellaswag"], "--device", "cpu", "--out", saved["root"] / "scores.json") == 2
    finally:
        os.umask(old_umask)
    assert not list(saved["root"].glob("*scores.json*"))


@pytest.mark.parametrize(
    ("file", "damage", "detail"),
    [
        ("model.safetensors", lambda data: data[:100], "Error while deserializing header: invalid header length"),
        ("meta.json", lambda data: b"{" + data,
         "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "generate"])
def test_a_damaged_checkpoint_file_is_a_one_line_error_naming_another(saved, capsys, command, file, damage, detail):
    import shutil

    newer = shutil.copytree(saved["step"], saved["run"] / "checkpoints" / "step_0000006")
    (newer / file).write_bytes(damage((newer / file).read_bytes()))
    extra = ["--hellaswag", saved["hellaswag"]] if command == "eval" else []
    assert run_cli(command, "--checkpoint", saved["run"], "--tokenizer", saved["tokenizer"], *extra,
                   "--device", "cpu") == 2
    assert one_line_error(capsys, command) == (
        f"{newer / file} is damaged ({detail}); use another checkpoint, e.g. --checkpoint {saved['step']}")


def test_eval_generate_and_export_take_a_gpt2_checkpoint(saved, byte_tokenizer, tmp_path, capsys) -> None:
    from gpt25.model import ModelConfig, TransformerLM

    torch.manual_seed(0)
    config = ModelConfig.preset("gpt2", vocab_size=257, context_length=32, d_model=32, num_layers=2, num_heads=2)
    meta = make_meta(5, config, tokenizer_fingerprint=byte_tokenizer.fingerprint())
    save_checkpoint(TransformerLM(config), None, 5, tmp_path / "gpt2" / "checkpoints" / "step_0000005", meta=meta)
    run = tmp_path / "gpt2"
    assert run_cli("eval", "--checkpoint", run, "--tokenizer", saved["tokenizer"], "--data", saved["data"],
                   "--hellaswag", saved["hellaswag"], "--device", "cpu", "--batch_size", 2, "--out",
                   tmp_path / "eval.json") == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["val_loss"] > 0 and results["hellaswag"]["n"] == 3
    capsys.readouterr()
    assert run_cli("generate", "--checkpoint", run, "--tokenizer", saved["tokenizer"], "--prompt", "The cat",
                   "--max_new_tokens", 20, "--temperature", 0, "--device", "cpu") == 0
    assert capsys.readouterr().out.startswith("The cat")
    assert run_cli("export", "hf", "--checkpoint", run, "--tokenizer", saved["tokenizer"], "--out", tmp_path / "hf") == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
