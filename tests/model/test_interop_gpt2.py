"""GPT-2 interop: gpt25's GPT-2 gives transformers' GPT2LMHeadModel logits both ways, and `gpt25 export` refuses
the mixes no transformers class represents; OpenAI's GPT-2 folder layout imports and evaluates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from gpt25.interop import export_hf, hf_class, import_hf, read_hf_folder
from gpt25.model import ModelConfig, TransformerLM

SHAPE = dict(vocab_size=300, context_length=32, d_model=64, num_layers=2, num_heads=4)
GPT2_TOKENIZER = Path("/work/shared/data/gpt2")


def random_model(config: ModelConfig) -> TransformerLM:
    """Random weights with non-trivial biases and norm gains, so a mixed-up name or transpose would show."""
    torch.manual_seed(0)
    model = TransformerLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.uniform_(0.5, 1.5) if name.endswith("weight") else parameter.normal_(0.0, 0.1)
    return model


def run_cli(*argv: object) -> int:
    from gpt25.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    return exit_info.value.code


@pytest.mark.slow  # importing transformers' models pulls in torch._dynamo: 15-50 s on a busy 2-core machine
@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": False}, {"bias": False}], ids=["gpt2", "untied", "no-bias"])
def test_export_gives_gpt2lmheadmodel_logits_and_imports_back(changes: dict, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model = random_model(ModelConfig.preset("gpt2", **SHAPE, **changes))
    folder = export_hf(model, None, tmp_path / "hf")
    hf_config = json.loads((folder / "config.json").read_text())
    assert hf_config["architectures"] == ["GPT2LMHeadModel"] and hf_config["n_inner"] == 256
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model(ids), atol=1e-5, rtol=1e-5)
    imported, _ = import_hf(folder)
    expected = model.state_dict()
    if not model.config.bias:  # exported as zero biases, which GPT2LMHeadModel always has
        assert imported.config == ModelConfig.preset("gpt2", **SHAPE)
        assert imported.layers[0].attn.q_proj.bias.abs().sum() == 0
    else:
        assert imported.config == model.config
    assert all(torch.equal(tensor, imported.state_dict()[name]) for name, tensor in expected.items())


@pytest.mark.slow
def test_transformers_gpt2_reads_into_gpt25_with_the_same_logits(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        for name, parameter in hf_model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    hf_model.save_pretrained(tmp_path / "hf")
    config, state = read_hf_folder(tmp_path / "hf")
    assert config == ModelConfig.preset("gpt2", **SHAPE)
    model = TransformerLM(config).eval()
    model.load_state_dict(state)
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_model(ids).logits, atol=1e-5, rtol=1e-5)


def openai_style_folder(model: TransformerLM, folder: Path) -> Path:
    """Export, then rewrite as OpenAI's `gpt2` repo stores it: no "transformer." prefix, attention mask buffers."""
    from safetensors.torch import load_file, save_file

    export_hf(model, None, folder)
    weights = {name.removeprefix("transformer."): tensor for name, tensor in load_file(folder / "model.safetensors").items()}
    weights |= {f"h.{i}.attn.bias": torch.ones(1, 1, 32, 32) for i in range(model.config.num_layers)}
    save_file(weights, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config.pop("n_inner")  # OpenAI's config leaves it null: 4 n_embd
    (folder / "config.json").write_text(json.dumps(config | {"activation_function": "gelu_new"}))
    return folder


def test_openai_layout_reads_exactly(tmp_path: Path) -> None:
    model = random_model(ModelConfig.preset("gpt2", **SHAPE))
    config, state = read_hf_folder(openai_style_folder(model, tmp_path / "gpt2"))
    assert config == model.config
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in state.items())


def test_gpt2_reader_refuses_what_it_cannot_compute(tmp_path: Path) -> None:
    folder = openai_style_folder(random_model(ModelConfig.preset("gpt2", **SHAPE)), tmp_path / "gpt2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"activation_function": "relu",
                                                             "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(ValueError, match="gpt25 has no activation 'relu' .*, scale_attn_by_inverse_layer_idx"):
        read_hf_folder(folder)
    (folder / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type is 'bert'; only Llama and GPT-2 checkpoints can be imported"):
        read_hf_folder(folder)


@pytest.mark.parametrize(("changes", "named"), [
    (dict(arch="gpt2", mlp="swiglu"), "this model has mlp=swiglu"),
    (dict(arch="gpt25", norm="layernorm"), "this model has norm=layernorm"),
    (dict(arch="gpt25", bias=True), "LlamaForCausalLM needs norm=rmsnorm, mlp=swiglu, positions=rope, bias=False, "
                                    "qk_norm=False, logit_softcap=0.0 (this model has bias=True)"),
])
def test_export_refuses_a_mix_no_transformers_class_represents(changes: dict, named: str, tmp_path: Path) -> None:
    components = {name: value for name, value in changes.items() if name != "arch"}
    model = TransformerLM(ModelConfig.preset(changes["arch"], **SHAPE, **components))
    with pytest.raises(ValueError, match=f"^no transformers class represents this architecture: .*{re.escape(named)}"):
        export_hf(model, None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert hf_class(ModelConfig.preset("gpt25", **SHAPE, tie_embeddings=True)) == "LlamaForCausalLM"


@pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason="needs GPT-2's vocab.json and merges.txt in /work/shared/data")
def test_an_openai_gpt2_folder_imports_and_evaluates_with_the_gpt2_tokenizer(tmp_path: Path) -> None:
    """The route to scoring OpenAI's `gpt2` on HellaSwag (random weights here: no network)."""
    assert run_cli("tokenizer", "import", "--vocab", GPT2_TOKENIZER / "gpt2_vocab.json",
                   "--merges", GPT2_TOKENIZER / "gpt2_merges.txt", "--out", tmp_path / "tokenizer") == 0
    model = random_model(ModelConfig.preset("gpt2", **SHAPE | dict(vocab_size=50257, num_layers=1, d_model=32)))
    folder = openai_style_folder(model, tmp_path / "gpt2")
    assert run_cli("checkpoint", "import", folder, "--tokenizer", tmp_path / "tokenizer", "--out", tmp_path / "imported") == 0
    assert json.loads((tmp_path / "imported" / "meta.json").read_text())["imported_from"]["layout"] == "gpt2-hf"
    examples = [{"ctx": "The cat sat on the", "endings": ["mat.", "dog", "away", "then"], "label": 0}] * 2
    (tmp_path / "hellaswag.jsonl").write_text("".join(json.dumps(example) + "\n" for example in examples))
    assert run_cli("eval", "--checkpoint", tmp_path / "imported", "--tokenizer", tmp_path / "tokenizer",
                   "--hellaswag", tmp_path / "hellaswag.jsonl", "--device", "cpu", "--out", tmp_path / "eval.json") == 0
    assert json.loads((tmp_path / "eval.json").read_text())["hellaswag"]["n"] == 2
    assert run_cli("export", "hf", "--checkpoint", tmp_path / "imported", "--tokenizer", tmp_path / "tokenizer",
                   "--out", tmp_path / "again") == 0
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["model_type"] == "gpt2" and again["eos_token_id"] == 50256
