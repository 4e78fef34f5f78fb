"""`gpt25 demo` end to end in a temporary folder, checking every artefact it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt25.checkpoint import list_checkpoints, load_model
from gpt25.data import iter_shards, read_manifest
from gpt25.demo import unigram_loss
from gpt25.tokenizer import Tokenizer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu-tiny.toml"


def test_unigram_loss_of_uniform_tokens_is_log_vocab() -> None:
    tokens = np.arange(8).repeat(100)
    assert unigram_loss(tokens, tokens, 8) == pytest.approx(np.log(8))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo with configs/cpu-tiny.toml for 120 steps: every stage as a user runs it, in a few minutes."""
    out = tmp_path_factory.mktemp("demo") / "run"
    completed = subprocess.run([sys.executable, "-m", "gpt25", "demo", "--out", str(out), "--minutes", "2",
                                "--sft_steps", "20", "--config", str(TINY_CONFIG)],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "report:" in completed.stdout
    return out


@pytest.mark.slow
def test_demo_shards_are_readable_with_its_tokenizer(demo_dir: Path) -> None:
    tokenizer = Tokenizer.load(demo_dir / "tokenizer")
    assert 4000 <= tokenizer.vocab_size <= 4096
    manifest = read_manifest(demo_dir / "data" / "shards")
    assert manifest["tokenizer_fingerprint"] == tokenizer.fingerprint()
    for split in ("train", "val"):
        shards = list(iter_shards(demo_dir / "data" / "shards", split))
        assert sum(len(shard) for shard in shards) == manifest["splits"][split]["tokens"] > 0
    text = tokenizer.decode(list(next(iter_shards(demo_dir / "data" / "shards", "train"))[:200]))
    assert text.strip()


@pytest.mark.slow
def test_demo_checkpoint_loads_and_beats_the_unigram_baseline(demo_dir: Path) -> None:
    checkpoints = list_checkpoints(demo_dir / "run")
    assert checkpoints
    model, meta = load_model(demo_dir / "run")
    assert meta["step"] == 120 and model.config.vocab_size == Tokenizer.load(demo_dir / "tokenizer").vocab_size
    results = json.loads((demo_dir / "eval.json").read_text())
    assert results["val_loss"] < results["unigram_loss"] - 0.5, results


@pytest.mark.slow
def test_demo_report_and_plot(demo_dir: Path) -> None:
    assert (demo_dir / "results.png").read_bytes()[:8] == PNG_SIGNATURE
    from PIL import Image

    with Image.open(demo_dir / "results.png") as image:
        image.load()
        assert image.width > 400 and image.height > 300
    report = (demo_dir / "report.md").read_text()
    for needle in ("val", "perplexity", "unigram", "bits per byte", "Samples", "gpt25 train --config", "| train |",
                   "| sft |", "chat model:", "base model:", "What does `shutil.copytree` do?", "gpt25 sft --checkpoint"):
        assert needle in report, needle


@pytest.mark.slow
def test_demo_chat_model_has_role_tokens_and_its_own_tokenizer(demo_dir: Path) -> None:
    tokenizer = Tokenizer.load(demo_dir / "sft" / "tokenizer")
    assert tokenizer.vocab_size == Tokenizer.load(demo_dir / "tokenizer").vocab_size + 3
    model, meta = load_model(demo_dir / "sft")
    assert meta["step"] == 20 and model.config.vocab_size == tokenizer.vocab_size
    assert any("val_accuracy" in row for row in map(json.loads, (demo_dir / "sft" / "metrics.jsonl").open()))


def test_a_signal_during_training_ends_the_demo_with_its_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    import gpt25.demo as demo
    from gpt25.cli import main

    def later_stage(paths, config):
        raise AssertionError("a stage after a stopped training ran")

    for stage in ("build_corpus", "build_tokenizer", "build_shards"):
        monkeypatch.setattr(demo, stage, lambda paths, *rest: {})
    monkeypatch.setattr(demo, "summarize", lambda name, outcome: "")
    monkeypatch.setattr(demo, "train_model", lambda paths, config: {"stopped_by": "SIGTERM", "step": 3})
    monkeypatch.setattr(demo, "evaluate_model", later_stage)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "demo")])
    assert exit_info.value.code == 143
    assert "[4/9] train stopped by SIGTERM; run `gpt25 demo` again with the same --out" in capsys.readouterr().out
