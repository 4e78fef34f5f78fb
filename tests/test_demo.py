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
    completed = subprocess.run([sys.executable, "-m", "gpt25", "demo", "--out", str(out), "--train_steps", "120",
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


def test_the_budget_buys_whole_steps_and_never_fewer_than_the_minimum() -> None:
    from gpt25.demo import MIN_TRAIN_STEPS, steps_for_budget

    assert steps_for_budget(5, 1.0) == 200  # 300 s over 1.5 s a step (the step plus the loop's overhead)
    assert steps_for_budget(5, 2.5) == 80
    assert steps_for_budget(0.1, 60.0) == MIN_TRAIN_STEPS


def test_train_steps_come_from_the_flag_then_an_earlier_run_then_the_timed_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gpt25.demo as demo

    paths = demo.demo_paths(tmp_path)
    Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"]).save(paths["tokenizer"])
    settings = demo.read_toml_settings(TINY_CONFIG) | {"data": str(tmp_path), "tokenizer": str(paths["tokenizer"]),
                                                       "out": str(paths["run"])}
    timed = []
    monkeypatch.setattr(demo, "time_training_step", lambda config: timed.append(config.out) or 0.5)
    config = demo.DemoConfig(out=tmp_path, minutes=1.0)
    assert demo.resolve_train_steps(paths, config, settings) == 80 and timed == [str(paths["run"])]  # 60 s / 0.75
    assert config.seconds_per_step == 0.5 and "0.50 s a step, timed on this machine" in demo.steps_source(config)
    paths["run"].mkdir(parents=True)
    (paths["run"] / "config.json").write_text(json.dumps({"train_steps": 77}))
    assert demo.resolve_train_steps(paths, demo.DemoConfig(out=tmp_path), settings) == 77
    assert demo.resolve_train_steps(paths, demo.DemoConfig(out=tmp_path, train_steps=12), settings) == 12
    assert len(timed) == 1


def test_a_stage_is_reused_only_when_made_from_the_same_inputs(tmp_path: Path) -> None:
    import gpt25.demo as demo

    paths = demo.demo_paths(tmp_path)
    output = paths["run"] / "config.json"
    assert not demo.made_from(paths, "train", {"lr": 1.0}, paths["run"])  # nothing yet: made now
    output.parent.mkdir(parents=True)
    output.write_text("{}")
    assert demo.made_from(paths, "train", {"lr": 1.0}, paths["run"]) and output.is_file()
    assert not demo.made_from(paths, "train", {"lr": 2.0}, paths["run"]) and not paths["run"].exists()
    assert json.loads(paths["stages"].read_text()) == {"train": {"lr": 2.0}}


def test_a_new_vocab_size_retrains_the_tokenizer(tmp_path: Path) -> None:
    import gpt25.demo as demo

    paths = demo.demo_paths(tmp_path)
    paths["corpus"].parent.mkdir(parents=True)
    paths["corpus"].write_text(" ".join(f"word{index} x{index * 7 % 13}y" for index in range(2000)))
    assert demo.build_tokenizer(paths, 290) == {"reused": False, "vocab_size": 290}
    assert demo.build_tokenizer(paths, 290) == {"reused": True, "vocab_size": 290}
    assert demo.build_tokenizer(paths, 280) == {"reused": False, "vocab_size": 280}


def test_the_stage_list_is_the_demos_own() -> None:
    from gpt25.demo import STAGES

    assert STAGES[0] == "corpus" and STAGES[-1] == "report" and len(STAGES) == len(set(STAGES)) == 9
