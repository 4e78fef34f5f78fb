"""The lm-evaluation-harness adapter runs tiny tasks defined here on a local jsonl, offline."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.tasks import TaskManager  # noqa: E402

from gpt25.engine import generate_tokens  # noqa: E402
from gpt25.eval.lm_eval_adapter import GPT25LM  # noqa: E402

ROWS = [
    {"ctx": "The cat sat on the", "endings": ["mat.", "hat and a very long thing.", "dog", "x"], "label": 0},
    {"ctx": "One two three", "endings": ["four", "five", "six", "seven"], "label": 2},
    {"ctx": "Hello", "endings": ["world", "there", "you", "all"], "label": 1},
]


def task_configs(data_file: str, cache_dir: str) -> list[dict]:
    """A multiple-choice, a rolling-perplexity and a generation task over the same local jsonl."""
    dataset = {"dataset_path": "json", "test_split": "test",
               "dataset_kwargs": {"data_files": {"test": data_file}, "cache_dir": cache_dir}}
    return [
        dataset | {"task": "gpt25_tiny_choice", "output_type": "multiple_choice", "doc_to_text": "{{ctx}}",
                   "doc_to_choice": "{{endings}}", "doc_to_target": "{{label}}",
                   "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                   {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]},
        dataset | {"task": "gpt25_tiny_perplexity", "output_type": "loglikelihood_rolling", "doc_to_text": "",
                   "doc_to_target": "{{ctx}}",
                   "metric_list": [{"metric": "bits_per_byte", "aggregation": "bits_per_byte",
                                    "higher_is_better": False}]},
        dataset | {"task": "gpt25_tiny_generation", "output_type": "generate_until", "doc_to_text": "{{ctx}}",
                   "doc_to_target": "{{endings[0]}}",
                   "generation_kwargs": {"until": ["\n"], "max_gen_toks": 6, "do_sample": False},
                   "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]},
    ]


def last_tokens_log_likelihood(model, token_ids: list[int], count: int) -> float:
    """Reference: log p of the last `count` tokens of `token_ids`, from one plain forward pass."""
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([token_ids[:-1]])).double(), dim=-1)[0]
    positions = range(len(token_ids) - count, len(token_ids))
    return sum(log_probs[position - 1, token_ids[position]].item() for position in positions)


def test_simple_evaluate_runs_all_three_request_types_offline(tmp_path, byte_tokenizer, random_lm) -> None:
    data_file = tmp_path / "tiny.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    model = random_lm(context_length=16)  # short: the rolling and cut-from-the-left paths are exercised
    lm = GPT25LM(model=model, tokenizer=byte_tokenizer, batch_size=3, device="cpu")
    # include_defaults=False: skip indexing lm-eval's thousands of built-in task files.
    output = lm_eval.simple_evaluate(model=lm, tasks=task_configs(str(data_file), str(tmp_path / "hf")),
                                     task_manager=TaskManager(include_defaults=False), log_samples=True)
    results, samples = output["results"], output["samples"]
    assert 0.0 <= results["gpt25_tiny_choice"]["acc,none"] <= 1.0

    # Multiple choice: the log-likelihood of " mat." after the context, cut from the left to 16 + 1 tokens.
    response = samples["gpt25_tiny_choice"][0]["resps"][0][0][0]
    assert response == pytest.approx(last_tokens_log_likelihood(model, list(b"The cat sat on the mat.")[-17:], 5))

    # Rolling: a 13-byte document is one window, each byte predicted after <|endoftext|> + the bytes before it.
    rolling = samples["gpt25_tiny_perplexity"][1]["resps"][0][0]
    assert rolling == pytest.approx(last_tokens_log_likelihood(model, [byte_tokenizer.eot_id, *b"One two three"], 13))
    assert math.isfinite(results["gpt25_tiny_perplexity"]["bits_per_byte,none"])

    # Generation is the greedy continuation, as gpt25.sample produces it.
    generation = samples["gpt25_tiny_generation"][2]["resps"][0][0]
    greedy = generate_tokens(model, torch.tensor([byte_tokenizer.encode("Hello")]), max_new_tokens=6,
                             eos_id=byte_tokenizer.eot_id, vocab_size=257)
    assert generation == byte_tokenizer.decode(greedy[0].tolist()).split("\n")[0].split("<|endoftext|>")[0]


def test_the_model_is_registered_and_arguments_are_checked(byte_tokenizer, random_lm) -> None:
    from lm_eval.api.registry import get_model

    assert get_model("gpt25") is GPT25LM
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        GPT25LM(tokenizer=byte_tokenizer)
    with pytest.raises(ValueError, match=r"^no tokenizer: give tokenizer=DIR, .*checkpoint=RUN,tokenizer=DIR\)$"):
        GPT25LM(model=random_lm())
    with pytest.raises(ValueError, match="^--device 'foo' is not a device; use cpu"):
        GPT25LM(model=random_lm(), tokenizer=byte_tokenizer, device="foo")
    with pytest.raises(ValueError, match="tokenizer has 257 tokens but the model.s vocab_size is 200"):
        GPT25LM(model=random_lm(vocab_size=200), tokenizer=byte_tokenizer, device="cpu")


def save_run(tmp_path, tokenizer, model) -> None:
    """tmp_path/tokenizer, a run dir tmp_path/run whose one checkpoint records the tokenizer's fingerprint and
    the task gpt25_tiny_choice in tmp_path/tasks."""
    from gpt25.checkpoint import make_meta, save_checkpoint

    tokenizer.save(tmp_path / "tokenizer")
    meta = make_meta(1, model.config, tokenizer_fingerprint=tokenizer.fingerprint())
    save_checkpoint(model, None, 1, tmp_path / "run" / "checkpoints" / "step_0000001", meta=meta)
    data_file = tmp_path / "tiny.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (tmp_path / "tasks").mkdir()
    task = task_configs(str(data_file), str(tmp_path / "hf"))[0]
    (tmp_path / "tasks" / "tiny.yaml").write_text(json.dumps(task))  # JSON is YAML


def run_main(tmp_path, monkeypatch, model_args: str) -> None:
    from gpt25.eval.lm_eval_adapter import main

    monkeypatch.setattr("sys.argv", ["unused"])
    # As in the first test, skip indexing lm-eval's built-in tasks (half a minute on a busy machine).
    monkeypatch.setattr("lm_eval.tasks.TaskManager", functools.partial(TaskManager, include_defaults=False))
    main(["--model_args", model_args, "--include_path", str(tmp_path / "tasks"), "--tasks", "gpt25_tiny_choice",
          "--device", "cpu", "--batch_size", "4"])


def test_a_checkpoint_refuses_a_tokenizer_it_was_not_trained_with(tmp_path, byte_tokenizer, random_lm) -> None:
    from gpt25.tokenizer import Tokenizer

    save_run(tmp_path, byte_tokenizer, random_lm(context_length=32))
    other = Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>", "<|pad|>"])
    expected = (f"^tokenizer fingerprint {other.fingerprint()[:12]} differs from the checkpoint's "
                f"{byte_tokenizer.fingerprint()[:12]}; pass the tokenizer the model was trained with$")
    with pytest.raises(ValueError, match=expected):  # same vocab size: only the fingerprint tells them apart
        GPT25LM(checkpoint=str(tmp_path / "run"), tokenizer=other, device="cpu")
    lm = GPT25LM(checkpoint=str(tmp_path / "run"), tokenizer=str(tmp_path / "tokenizer"), device="cpu")
    assert lm.max_length == 32


def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys, byte_tokenizer, random_lm) -> None:
    save_run(tmp_path, byte_tokenizer, random_lm(context_length=32))
    with pytest.raises(SystemExit) as exit_info:
        run_main(tmp_path, monkeypatch, f"checkpoint={tmp_path / 'run'}")  # no tokenizer=
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "gpt25 lm_eval_adapter: error: no tokenizer: give tokenizer=DIR, the folder the model was trained with "
        "(--model_args checkpoint=RUN,tokenizer=DIR)")


def test_command_line_entry_point_loads_a_checkpoint(tmp_path, monkeypatch, capsys, byte_tokenizer, random_lm) -> None:
    save_run(tmp_path, byte_tokenizer, random_lm(context_length=32))
    run_main(tmp_path, monkeypatch, f"checkpoint={tmp_path / 'run'},tokenizer={tmp_path / 'tokenizer'}")
    table = capsys.readouterr().out
    assert "gpt25_tiny_choice" in table and "acc_norm" in table
