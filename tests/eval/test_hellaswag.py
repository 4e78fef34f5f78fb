"""HellaSwag: loader for the original jsonl format, and scoring whose answers are known by construction."""

from __future__ import annotations

import json
import math
import urllib.error
from pathlib import Path

import pytest
import torch

from gpt25.eval import evaluate_hellaswag, load_hellaswag
from gpt25.eval.hellaswag import scoring_rows
from gpt25.eval.scoring import score_sequences

VOCAB_SIZE = 272  # the byte tokenizer's 257 ids, padded
A_SCORE = 6.0  # the context-free model's logit for "a"; every other token has 0
# Byte tokenizer: " " + ending is one token per character.
# 1: "aaaa" wins on both measures.
# 2: the 20 a's lose on total log-likelihood (21 tokens) but win per byte -> acc wrong, acc_norm right.
# 3: "x" wins on total; the 16-character ending wins per byte -> acc right, acc_norm wrong.
EXAMPLES = [
    {"ctx": "Any context at all.", "endings": ["aaaa", "bbbb", "cccc", "dddd"], "label": 0},
    {"ctx": "Another one", "endings": ["b", "a" * 20, "cc", "ddd"], "label": 1},
    {"ctx": "Third", "endings": ["ab", "x", "a" * 15 + "b", "zz"], "label": 1},
]


def write_jsonl(path: Path, examples: list[dict]) -> Path:
    """The original HellaSwag layout: extra fields (ind, activity_label, ctx_a, ...) around ctx/endings/label."""
    with open(path, "w", encoding="utf-8") as file:
        for index, example in enumerate(examples):
            record = {"ind": index, "activity_label": "Test", "ctx_a": example["ctx"], "ctx_b": "",
                      "split": "val", "split_type": "indomain", "source_id": f"test~{index}"} | example
            file.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def a_loving_model(context_free_lm):
    scores = torch.zeros(VOCAB_SIZE)
    scores[ord("a")] = A_SCORE
    return context_free_lm(scores)


def expected_choice(example: dict, per_byte: bool) -> int:
    """Argmax computed from the known per-token log-probabilities."""
    log_normaliser = math.log(math.exp(A_SCORE) + VOCAB_SIZE - 1)
    def total(ending: str) -> float:
        return sum((A_SCORE if char == "a" else 0.0) - log_normaliser for char in " " + ending)
    values = [total(ending) / (len(ending) if per_byte else 1) for ending in example["endings"]]
    return max(range(len(values)), key=values.__getitem__)


def test_construction_gives_the_intended_answers() -> None:
    assert [expected_choice(e, per_byte=False) == e["label"] for e in EXAMPLES] == [True, False, True]
    assert [expected_choice(e, per_byte=True) == e["label"] for e in EXAMPLES] == [True, True, False]


def test_acc_and_acc_norm_on_a_model_with_a_known_preference(tmp_path, byte_tokenizer, a_loving_model) -> None:
    examples = load_hellaswag(write_jsonl(tmp_path / "hellaswag_val.jsonl", EXAMPLES))
    assert examples == EXAMPLES
    result = evaluate_hellaswag(a_loving_model, byte_tokenizer, examples, batch_size=5, device="cpu")
    assert result == {"acc": pytest.approx(2 / 3), "acc_norm": pytest.approx(2 / 3), "n": 3}
    assert evaluate_hellaswag(a_loving_model, byte_tokenizer, examples, batch_size=5, device="cpu", limit=2) == {
        "acc": 0.5, "acc_norm": 1.0, "n": 2}


def test_context_and_ending_are_encoded_separately(byte_tokenizer) -> None:
    rows = scoring_rows(byte_tokenizer, [{"ctx": "ab", "endings": ["cd", "e"], "label": 0}], context_length=64)
    assert rows == [(0, 0, list(b"ab cd"), 3), (0, 1, list(b"ab e"), 2)]
    long_rows = scoring_rows(byte_tokenizer, [{"ctx": "x" * 100, "endings": ["yz"], "label": 0}], context_length=16)
    assert long_rows == [(0, 0, list(b"x" * 14 + b" yz"), 3)]  # cut from the left to context + 1 tokens


def test_padded_batches_score_like_single_sequences(random_lm) -> None:
    model = random_lm()
    sequences = [[5, 9, 200, 3, 7], [11, 4], [1, 2, 3, 4, 5, 6, 7, 8, 9], [250, 251, 252]]
    num_scored = [2, 1, 5, 0]
    together, greedy = score_sequences(model, sequences, num_scored, "cpu")
    alone = [score_sequences(model, [s], [n], "cpu")[0][0] for s, n in zip(sequences, num_scored, strict=True)]
    assert together == pytest.approx(alone, abs=1e-4)
    assert together[3] == 0.0 and greedy[3] is True
    with torch.no_grad():
        log_probs = torch.log_softmax(model(torch.tensor([sequences[0][:-1]])), dim=-1)[0]
    assert together[0] == pytest.approx((log_probs[2, 3] + log_probs[3, 7]).item(), abs=1e-5)


def test_loader_errors_name_the_problem(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_hellaswag(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(EXAMPLES[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_hellaswag(bad)
    bad.write_text(json.dumps(EXAMPLES[0] | {"label": 4}) + "\n")
    with pytest.raises(ValueError, match="label 4"):
        load_hellaswag(bad)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("GPT25_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(ConnectionError, match="--hellaswag FILE") as error:
        load_hellaswag("download")
    assert "\n" not in str(error.value)


def test_download_is_cached(tmp_path, monkeypatch) -> None:
    cached = write_jsonl(tmp_path / "hellaswag_val.jsonl", EXAMPLES[:1])
    monkeypatch.setenv("GPT25_CACHE", str(tmp_path))
    monkeypatch.setattr("urllib.request.urlopen", pytest.fail)
    assert load_hellaswag("download") == load_hellaswag(cached)


def test_empty_selection_is_an_error(byte_tokenizer, a_loving_model) -> None:
    with pytest.raises(ValueError, match="no HellaSwag examples"):
        evaluate_hellaswag(a_loving_model, byte_tokenizer, EXAMPLES, batch_size=4, device="cpu", limit=0)
