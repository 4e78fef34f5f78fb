"""CORE against an independent, direct implementation (nanochat's Jinja templates and per-example loops), on a
small bundle written here; the offline message, --core_limit, `gpt25 eval --core` and --core_every in training."""

from __future__ import annotations

import json
import random
import re
import zipfile
from pathlib import Path

import jinja2
import pytest
import torch

from gpt25.eval import core
from gpt25.eval.core import evaluate_core, load_core_tasks

CONTEXT_LENGTH = 64
MC_TEMPLATE = """{%- for example in fewshot_examples -%}
{{ example.query }}{{ continuation_delimiter }}{{ example.choices[example.gold] }}

{% endfor -%}
{{ item.query }}{{ continuation_delimiter }}{{ choice }}"""
SCHEMA_TEMPLATE = """{%- for example in fewshot_examples -%}
{{ example.context_options[example.gold] }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ context }}{{ continuation_delimiter }}{{ item.continuation }}"""
LM_TEMPLATE = """{%- for example in fewshot_examples -%}
{{ example.context | trim }}{{ continuation_delimiter }}{{ example.continuation }}

{% endfor -%}
{{ item.context | trim }}{{ continuation_delimiter }}{% if include_continuation %}{{ item.continuation }}{% endif %}"""

MC_EXAMPLES = [
    {"query": "Cats say", "choices": ["meow", "moo", "a lot"], "gold": 0},
    {"query": "Cows say", "choices": ["meow", "moo", "a lot"], "gold": 1},
    {"query": "The sky is", "choices": ["the blue one", "the green one"], "gold": 0},  # choices share a prefix
    {"query": "Grass is", "choices": ["green", "aaaa", "blue"], "gold": 1},
    {"query": "A very long question " * 6 + "ends with", "choices": ["aa", "zq"], "gold": 0},  # > the context
    {"query": "Dogs say", "choices": ["woof", "aaa"], "gold": 0},
    {"query": "Two plus two is", "choices": ["four", "five", "a"], "gold": 2},
]
SCHEMA_EXAMPLES = [
    {"context_options": ["The trophy did not fit because the trophy", "The trophy did not fit because the case"],
     "continuation": "was too big.", "gold": 0},
    {"context_options": ["Anna thanked Mary because Anna", "Anna thanked Mary because Mary"],
     "continuation": "had helped her.", "gold": 1},
    {"context_options": ["aaa", "bbb"], "continuation": "aa", "gold": 0},
    {"context_options": ["The man lifted the boy because the man", "The man lifted the boy because the boy"],
     "continuation": "was strong.", "gold": 0},
    {"context_options": ["x", "a"], "continuation": "aaaa", "gold": 1},
]
LM_EXAMPLES = [
    {"context": "Say a: ", "continuation": "a"},
    {"context": "Say aa:\t", "continuation": "aa"},
    {"context": "Capital of France?", "continuation": "Paris"},
    {"context": "Echo ", "continuation": "aaa"},
    {"context": "Spell it", "continuation": "b"},
    {"context": "A long passage that runs on and on " * 3, "continuation": "a"},
]
TASKS = [  # label, kind, shots, delimiter, random baseline (percent), examples
    ("mc_task", "multiple_choice", 2, " ", 25.0, MC_EXAMPLES),
    ("schema_task", "schema", 1, " ", 50.0, SCHEMA_EXAMPLES),
    ("lm_task", "language_modeling", 1, "\nAnswer: ", 0.0, LM_EXAMPLES),
]


def write_bundle(root: Path) -> Path:
    """A bundle laid out as nanochat's eval_bundle: core.yaml, eval_meta_data.csv, eval_data/<kind>/<task>.jsonl."""
    (root / "eval_data" / "small").mkdir(parents=True)
    lines, meta = ["icl_tasks:"], ["Eval Task,Task Category,Random baseline,Centered Metric?"]
    for label, kind, shots, delimiter, baseline, examples in TASKS:
        lines += [f"- label: {label}", f"  dataset_uri: small/{label}.jsonl", f"  num_fewshot: [{shots}]",
                  f"  icl_task_type: {kind}", f"  continuation_delimiter: {json.dumps(delimiter)}"]
        meta.append(f"{label},small,{baseline},yes")
        (root / "eval_data" / "small" / f"{label}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    (root / "core.yaml").write_text("\n".join(lines) + "\n")
    (root / "eval_meta_data.csv").write_text("\n".join(meta) + "\n")
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "eval_bundle")


def reference_accuracy(model, tokenizer, kind: str, shots: int, delimiter: str,
                       data: list[dict]) -> tuple[float, list[list[tuple[list[int], int]]]]:
    """nanochat's per-example evaluation written out directly: Jinja prompts, one forward per example.
    Returns the accuracy and, per example, the (cropped token ids, number of scored tokens) of each option."""
    correct, scored = 0, []
    for index, item in enumerate(data):
        fewshot = []
        if shots:
            fewshot = [data[i] for i in random.Random(1234 + index).sample([i for i in range(len(data)) if i != index],
                                                                          shots)]
        context = {"fewshot_examples": fewshot, "continuation_delimiter": delimiter, "item": item}
        if kind == "multiple_choice":
            prompts = [jinja2.Template(MC_TEMPLATE).render(choice=choice, **context) for choice in item["choices"]]
        elif kind == "schema":
            prompts = [jinja2.Template(SCHEMA_TEMPLATE).render(context=option, **context)
                       for option in item["context_options"]]
        else:
            template = jinja2.Template(LM_TEMPLATE)
            prompts = [template.render(include_continuation=False, **context).strip(),
                       template.render(include_continuation=True, **context)]
        tokens = [[tokenizer.eot_id] + list(prompt.encode("utf-8")) for prompt in prompts]  # byte tokenizer
        if kind == "multiple_choice":
            start = 0
            while all(len(t) > start for t in tokens) and all(t[start] == tokens[0][start] for t in tokens):
                start += 1
            spans = [(start, len(t)) for t in tokens]
        elif kind == "schema":
            suffix = 0
            while all(t[-1 - suffix] == tokens[0][-1 - suffix] for t in tokens):
                suffix += 1
            spans = [(len(t) - suffix, len(t)) for t in tokens]
        else:
            assert tokens[1][: len(tokens[0])] == tokens[0]
            tokens, spans = [tokens[1]], [(len(tokens[0]), len(tokens[1]))]
        mean_losses, exact = [], []
        scored.append([])
        for sequence, (start, end) in zip(tokens, spans, strict=True):
            if len(sequence) > CONTEXT_LENGTH:
                crop = len(sequence) - CONTEXT_LENGTH
                sequence, start, end = sequence[crop:], start - crop, end - crop
            scored[-1].append((sequence, end - start))
            logits = model(torch.tensor([sequence]))[0]  # (seq, vocab)
            losses = -torch.log_softmax(logits, dim=-1)[:-1].gather(1, torch.tensor(sequence[1:])[:, None])[:, 0]
            mean_losses.append(losses[start - 1 : end - 1].mean().item())
            exact.append(logits.argmax(-1)[start - 1 : end - 1].tolist() == sequence[start:end])
        correct += exact[0] if kind == "language_modeling" else mean_losses.index(min(mean_losses)) == item["gold"]
    return correct / len(data), scored


def shuffled(examples: list[dict], limit: int | None = None) -> list[dict]:
    examples = list(examples)
    random.Random(1337).shuffle(examples)
    return examples[:limit] if limit else examples


def a_loving_lm(context_free_lm):
    """A model that predicts byte 'a' (then the other letters) everywhere."""
    scores = torch.zeros(272)
    scores[ord("a")] = 6.0
    scores[ord("b") : ord("z") + 1] = 2.0
    return context_free_lm(scores, context_length=CONTEXT_LENGTH)


@pytest.mark.parametrize("limit", [None, 5])
def test_core_matches_a_direct_implementation_of_nanochats_evaluation(bundle, byte_tokenizer, random_lm,
                                                                      limit) -> None:
    tasks = load_core_tasks(bundle, limit)
    assert len(MC_EXAMPLES[4]["query"]) > CONTEXT_LENGTH  # the cut from the left is exercised
    # Random models (ties improbable); a context-free model would tie every schema option.
    for model in (random_lm(context_length=CONTEXT_LENGTH), random_lm(context_length=CONTEXT_LENGTH, seed=1)):
        result = evaluate_core(model, byte_tokenizer, tasks, batch_size=3, device="cpu")
        with torch.no_grad():
            references = {label: reference_accuracy(model, byte_tokenizer, kind, shots, delimiter,
                                                    shuffled(examples, limit))
                          for label, kind, shots, delimiter, _, examples in TASKS}
        expected = {label: accuracy for label, (accuracy, _) in references.items()}
        for task in tasks:  # the same tokens scored, option by option
            assert [core.scored_sequences(byte_tokenizer, task, index, CONTEXT_LENGTH)
                    for index in range(len(task.examples))] == references[task.label][1]
        assert {label: task["acc"] for label, task in result["tasks"].items()} == pytest.approx(expected, abs=1e-12)
        centred = [(expected[label] - 0.01 * baseline) / (1 - 0.01 * baseline) for label, _, _, _, baseline, _ in TASKS]
        assert result["core"] == pytest.approx(sum(centred) / 3, abs=1e-12)
        assert result["tasks"]["mc_task"]["n"] == (limit or len(MC_EXAMPLES))


def test_language_modelling_needs_every_continuation_token_greedy(byte_tokenizer, context_free_lm) -> None:
    """The scored tokens are what the continuation adds to the stripped prompt: with an empty delimiter, the
    a-loving model reproduces "aa" and "a" (after a stripped space) but not "ab" or " a"."""
    examples = [{"context": "x", "continuation": "aa"}, {"context": "y ", "continuation": "a"},
                {"context": "z", "continuation": "ab"}, {"context": "w", "continuation": " a"}]
    task = core.CoreTask("greedy", "language_modeling", 0, "", 0.0, examples)
    result = evaluate_core(a_loving_lm(context_free_lm), byte_tokenizer, [task], batch_size=3, device="cpu")
    assert result["tasks"]["greedy"]["acc"] == 0.5 and result["core"] == 0.5


def test_core_limit_keeps_the_first_n_of_nanochats_seeded_shuffle(bundle) -> None:
    full, limited = load_core_tasks(bundle), load_core_tasks(bundle, limit=3)
    for task, short, (_, kind, shots, delimiter, baseline, examples) in zip(full, limited, TASKS, strict=True):
        assert task.examples == shuffled(examples) != examples and short.examples == shuffled(examples)[:3]
        assert (short.kind, short.num_fewshot, short.delimiter, short.random_baseline) == (kind, shots, delimiter,
                                                                                           baseline)


def test_the_bundle_downloads_once_into_the_cache_and_offline_says_what_to_do(tmp_path, bundle, monkeypatch) -> None:
    monkeypatch.setenv("GPT25_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(core, "BUNDLE_URL", "http://127.0.0.1:9/eval_bundle.zip")  # nothing listens on port 9
    with pytest.raises(ConnectionError) as error:
        load_core_tasks()
    message = str(error.value)
    assert "\n" not in message and "--core_bundle DIR" in message and str(tmp_path / "cache" / "eval_bundle") in message
    assert not (tmp_path / "cache" / "eval_bundle").exists()
    archive = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(bundle.rglob("*")):
            zipped.write(path, Path("eval_bundle") / path.relative_to(bundle))
    monkeypatch.setattr(core, "BUNDLE_URL", archive.as_uri())
    assert [task.label for task in load_core_tasks()] == ["mc_task", "schema_task", "lm_task"]
    archive.unlink()  # the second time reads the cache
    assert len(load_core_tasks(limit=2)[0].examples) == 2


@pytest.mark.parametrize("in_place", ["another rank's bundle", "an empty folder", "a folder of other files"])
def test_the_unpacked_bundle_is_renamed_in_and_never_replaces_another_ranks(tmp_path, bundle, monkeypatch,
                                                                           in_place) -> None:
    monkeypatch.setenv("GPT25_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(bundle.rglob("*")):
            zipped.write(path, Path("eval_bundle") / path.relative_to(bundle))
    cached = tmp_path / "cache" / "eval_bundle"
    download = core.download_file

    def download_while_a_folder_appears(*args) -> Path:  # e.g. the rank beside this one renames its copy in
        cached.mkdir(parents=True)
        if in_place == "another rank's bundle":
            (cached / "core.yaml").write_text("the other rank's copy, which its neighbours are reading")
        elif in_place == "a folder of other files":
            (cached / "notes.txt").write_text("mine")
        return download(*args)

    monkeypatch.setattr(core, "BUNDLE_URL", archive.as_uri())
    monkeypatch.setattr(core, "download_file", download_while_a_folder_appears)
    if in_place == "a folder of other files":
        with pytest.raises(FileExistsError, match=r"^\S+eval_bundle is not a CORE bundle \(no core.yaml\) and is in "
                                                  r"the way; remove it or pass --core_bundle DIR$"):
            core.fetch_bundle()
        assert [path.name for path in cached.iterdir()] == ["notes.txt"]
    else:
        assert core.fetch_bundle() == cached
        kept = in_place == "another rank's bundle"
        assert (cached / "core.yaml").read_text().startswith("the other rank's copy") == kept
        assert (cached / "eval_meta_data.csv").is_file() != kept
    assert [path.name for path in cached.parent.iterdir()] == ["eval_bundle"]  # no unpacked copy left behind


def test_gpt25_eval_core_prints_a_table_and_writes_the_json(tmp_path, bundle, byte_tokenizer, random_lm, capsys) -> None:
    from gpt25.checkpoint import make_meta, save_checkpoint
    from gpt25.cli import main

    byte_tokenizer.save(tmp_path / "tokenizer")
    model = random_lm(context_length=CONTEXT_LENGTH)
    meta = make_meta(3, model.config, tokenizer_fingerprint=byte_tokenizer.fingerprint())
    step_dir = save_checkpoint(model, None, 3, tmp_path / "run" / "checkpoints" / "step_0000003", meta=meta)
    argv = ["eval", "--checkpoint", str(tmp_path / "run"), "--tokenizer", str(tmp_path / "tokenizer"), "--device",
            "cpu", "--core", "--core_bundle", str(bundle), "--core_limit", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    results = json.loads((step_dir / "eval.json").read_text())
    expected = evaluate_core(model, byte_tokenizer, load_core_tasks(bundle, 4), batch_size=1, device="cpu")
    assert results["core"]["core"] == pytest.approx(expected["core"], abs=1e-12)
    assert set(results["core"]["tasks"]) == {"mc_task", "schema_task", "lm_task"}
    table = capsys.readouterr().out
    assert re.search(rf"^CORE +{expected['core']:.4f}$", table, flags=re.MULTILINE)
    assert all(f"core {label}" in table for label in results["core"]["tasks"])
    with pytest.raises(SystemExit) as exit_info:
        main(argv[:-5] + ["--core_limit", "4", "--hellaswag", "x.jsonl"])
    assert exit_info.value.code != 0 and "apply to --core;" in capsys.readouterr().err


def test_core_every_logs_core_into_the_run_metrics(tmp_path, bundle, byte_tokenizer) -> None:
    from gpt25.data.prepare import PrepareConfig, prepare
    from gpt25.train import TrainConfig, train
    from gpt25.train.tracking import read_metrics

    byte_tokenizer.save(tmp_path / "tokenizer")
    (tmp_path / "corpus.txt").write_text("\n\n".join(f"Cats say meow and cows say moo, number {i}." for i in range(40)))
    prepare(PrepareConfig(sources=[str(tmp_path / "corpus.txt")], tokenizer_dir=str(tmp_path / "tokenizer"),
                          out_dir=str(tmp_path / "data"), val_docs=4, workers=1, progress=False))
    summary = train(TrainConfig(data=str(tmp_path / "data"), tokenizer=str(tmp_path / "tokenizer"),
                                out=str(tmp_path / "run"), d_model=32, num_layers=2, num_heads=2, d_ff=64,
                                context_length=CONTEXT_LENGTH, batch_size=2, train_steps=4, warmup_steps=1,
                                eval_every=0, eval_steps=1, save_every=0, log_every=1, device="cpu", seed=0,
                                core_every=2, core_limit=3, core_bundle=str(bundle)))
    rows = [row for row in read_metrics(tmp_path / "run") if "core" in row]
    assert [row["step"] for row in rows] == [2, 4]
    assert all(-3 <= row["core"] <= 1 for row in rows) and summary["core"] == rows[-1]["core"]


def test_negative_core_settings_are_refused() -> None:
    from gpt25.train import TrainConfig

    for name in ("core_every", "core_limit"):
        with pytest.raises(ValueError, match=f"--{name} must be >= 0"):
            TrainConfig(**{name: -1})
