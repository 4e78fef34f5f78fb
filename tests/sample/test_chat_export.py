"""`gpt25 export hf` of a chat model: the chat template and role tokens in the tokenizer files, rendering as
ours, and transformers' greedy reply equal to `gpt25 chat --temperature 0`'s."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch

from gpt25 import cli
from gpt25.chat import chat
from gpt25.engine import generate_tokens
from gpt25.interop import export_hf
from gpt25.tokenizer.chat_format import CHAT_SPECIAL_TOKENS, JINJA_CHAT_TEMPLATE, add_chat_tokens, render_prompt

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Où est the café?\nTell me."},
    {"role": "assistant", "content": "Here."},
    {"role": "user", "content": "Thanks <3"},
]


@pytest.fixture
def chat_tokenizer(byte_tokenizer):
    return add_chat_tokens(byte_tokenizer)


@pytest.fixture
def chat_run(tmp_path: Path, chat_tokenizer, random_lm, save_run) -> Path:
    model = random_lm(context_length=128)  # room for CONVERSATION (68 tokens) and a reply
    model.grow_vocab(chat_tokenizer.vocab_size)
    return save_run(tmp_path / "chat", model, chat_tokenizer)


@pytest.fixture
def exported(chat_run: Path, tmp_path: Path) -> Path:
    return export_hf(chat_run, chat_run / "tokenizer", tmp_path / "hf")


def test_the_export_carries_the_template_and_the_role_tokens(exported: Path, chat_tokenizer) -> None:
    settings = json.loads((exported / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == JINJA_CHAT_TEMPLATE
    assert settings["additional_special_tokens"] == CHAT_SPECIAL_TOKENS
    added = json.loads((exported / "tokenizer.json").read_text())["added_tokens"]
    assert [(token["content"], token["id"], token["special"]) for token in added] == [
        ("<|endoftext|>", 256, True), ("<|user|>", 257, True), ("<|assistant|>", 258, True), ("<|system|>", 259, True)
    ]
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [256, 257, 258, 259]  # a reply also ends at a role token


def test_a_base_models_export_has_no_chat_template(byte_tokenizer, random_lm, save_run, tmp_path: Path) -> None:
    run_dir = save_run(tmp_path / "base", random_lm(), byte_tokenizer)
    exported = export_hf(run_dir, run_dir / "tokenizer", tmp_path / "hf")
    assert "chat_template" not in json.loads((exported / "tokenizer_config.json").read_text())
    assert json.loads((exported / "generation_config.json").read_text())["eos_token_id"] == 256


def test_the_exported_template_renders_as_ours(exported: Path, chat_tokenizer) -> None:
    """The template, rendered the way transformers renders it (a sandboxed Jinja environment, blocks trimmed)
    and encoded by the exported tokenizer.json, gives render_prompt's ids."""
    sandbox = pytest.importorskip("jinja2.sandbox")
    tokenizers = pytest.importorskip("tokenizers")
    settings = json.loads((exported / "tokenizer_config.json").read_text())
    template = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        settings["chat_template"]
    )
    theirs = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
    for add_generation_prompt, ours in [(True, render_prompt(chat_tokenizer, CONVERSATION)),
                                        (False, render_prompt(chat_tokenizer, CONVERSATION)[:-2])]:
        text = template.render(messages=CONVERSATION, add_generation_prompt=add_generation_prompt)
        assert theirs.encode(text, add_special_tokens=False).ids == ours


STOP_IDS = (256, 257, 258, 259)  # <|endoftext|> and the role tokens


def hf_greedy_reply(hf_model, hf_tokenizer, messages: list[dict], max_new_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt ids from apply_chat_template, reply ids from greedy `generate` without the closing stop id)."""
    prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                              return_dict=True)["input_ids"]  # (1, prompt_len)
    generated = hf_model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)[0, prompt.shape[1]:]
    reply = generated.tolist()
    return prompt[0].tolist(), reply[:-1] if reply[-1] in STOP_IDS else reply


@pytest.mark.slow  # importing transformers' Llama pulls in torch._dynamo: 15-50 s on a busy 2-core machine
def test_transformers_greedy_reply_equals_gpt25_chat(exported: Path, chat_run: Path, monkeypatch, capsys) -> None:
    transformers = pytest.importorskip("transformers")
    from gpt25.checkpoint import load_for_inference

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    hf_model = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    model, tokenizer, _ = load_for_inference(chat_run, chat_run / "tokenizer")
    prompt_ids, reply_ids = hf_greedy_reply(hf_model, hf_tokenizer, CONVERSATION, max_new_tokens=12)
    assert prompt_ids == render_prompt(tokenizer, CONVERSATION)
    ours = generate_tokens(model, torch.tensor([prompt_ids]), max_new_tokens=12)[0].tolist()
    assert ours[: len(reply_ids)] == reply_ids
    assert len(reply_ids) == 12 or ours[len(reply_ids)] in STOP_IDS  # both stopped at the same place
    assert chat(model, tokenizer, CONVERSATION, temperature=0, max_new_tokens=12) == hf_tokenizer.decode(reply_ids)

    question = [{"role": "user", "content": "Hi"}]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    with pytest.raises(SystemExit):
        cli.main(["chat", "--checkpoint", str(chat_run), "--prompt", "Hi", "--temperature", "0", "--max_new_tokens", "12"])
    _, reply_ids = hf_greedy_reply(hf_model, hf_tokenizer, question, max_new_tokens=12)
    assert capsys.readouterr().out == hf_tokenizer.decode(reply_ids) + "\n"
