"""`gpt25 data import-raw`: headerless token files through the shard reader and the loader, --copy,
the one-line errors, and a few training steps on an imported folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt25.cli import main
from gpt25.data import iter_shards, load_split, read_manifest
from gpt25.data.loader import ShardLoader
from gpt25.data.raw import RawImportConfig, import_raw
from gpt25.tokenizer import Tokenizer

CONTEXT = 16


def write_tokens(path: Path, num_tokens: int, tokenizer: Tokenizer, seed: int, dtype: str = "<u2") -> np.ndarray:
    """A raw token file of random ids below the vocab, an <|endoftext|> about every 50 tokens; returns its tokens."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, tokenizer.eot_id, num_tokens)
    tokens[rng.random(num_tokens) < 0.02] = tokenizer.eot_id
    tokens = tokens.astype(dtype)
    tokens.tofile(path)
    return tokens


@pytest.fixture
def raw_files(tmp_path: Path, tokenizer: Tokenizer) -> dict[str, list[tuple[Path, np.ndarray]]]:
    """{"train": two files, "val": one file} of (path, tokens)."""
    return {
        "train": [(tmp_path / "a.bin", write_tokens(tmp_path / "a.bin", 3000, tokenizer, seed=1)),
                  (tmp_path / "b.bin", write_tokens(tmp_path / "b.bin", 2000, tokenizer, seed=2))],
        "val": [(tmp_path / "val.bin", write_tokens(tmp_path / "val.bin", 800, tokenizer, seed=3))],
    }


def imported(raw_files: dict, tokenizer_dir: Path, out: Path, **options) -> Path:
    config = RawImportConfig(train=[str(path) for path, _ in raw_files["train"]],
                             val=[str(path) for path, _ in raw_files["val"]],
                             tokenizer_dir=str(tokenizer_dir), out_dir=str(out), progress=False, **options)
    import_raw(config)
    return out


def split_tokens(raw_files: dict, split: str) -> np.ndarray:
    return np.concatenate([tokens for _, tokens in raw_files[split]]).astype(np.int64)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_the_manifest_references_the_files_and_the_reader_gives_their_tokens(
    tmp_path: Path, raw_files: dict, tokenizer_dir: Path, tokenizer: Tokenizer
) -> None:
    data_dir = imported(raw_files, tokenizer_dir, tmp_path / "data")
    manifest = read_manifest(data_dir)
    train_entries = manifest["splits"]["train"]["shards"]
    assert [entry["file"] for entry in train_entries] == [str(tmp_path / "a.bin"), str(tmp_path / "b.bin")]
    assert [entry["tokens"] for entry in train_entries] == [3000, 2000]
    assert [entry["bytes"] for entry in train_entries] == [6000, 4000]
    assert not list(data_dir.glob("*.bin"))  # nothing copied
    for split in ("train", "val"):
        pieces = list(iter_shards(data_dir, split))
        for piece, (_, tokens) in zip(pieces, raw_files[split], strict=True):
            np.testing.assert_array_equal(piece, tokens)
        np.testing.assert_array_equal(load_split(data_dir, split, tokenizer), split_tokens(raw_files, split))
        assert manifest["splits"][split]["documents"] == int((split_tokens(raw_files, split) == tokenizer.eot_id).sum())
    assert Tokenizer.load(data_dir / "tokenizer").fingerprint() == tokenizer.fingerprint()


def expected_inputs(tokens: np.ndarray, loader: ShardLoader, batch: int, global_batch: int) -> torch.Tensor:
    """The inputs of global batch `batch` (epoch 0) by the loader's documented order, from the raw tokens."""
    order = np.random.default_rng([loader.seed, 0]).permutation(loader.num_windows)
    windows = order[batch * global_batch : (batch + 1) * global_batch]
    return torch.from_numpy(np.stack([tokens[index * CONTEXT : index * CONTEXT + CONTEXT] for index in windows]))


def test_the_loader_reads_the_files_in_order_with_one_and_two_ranks(
    tmp_path: Path, raw_files: dict, tokenizer_dir: Path
) -> None:
    data_dir = imported(raw_files, tokenizer_dir, tmp_path / "data")
    tokens = split_tokens(raw_files, "train")
    single = ShardLoader(data_dir, "train", 6, CONTEXT, seed=5)
    ranks = [ShardLoader(data_dir, "train", 3, CONTEXT, rank=rank, world_size=2, seed=5) for rank in range(2)]
    assert single.num_windows == (5000 - 1) // CONTEXT
    for batch in range(single.num_windows // 6):
        inputs, targets = single.next_batch()
        assert torch.equal(inputs, expected_inputs(tokens, single, batch, 6))
        assert torch.equal(targets[:, :-1], inputs[:, 1:])
        assert torch.equal(torch.cat([loader.next_batch()[0] for loader in ranks]), inputs)


def test_the_loader_resumes_on_referenced_files(tmp_path: Path, raw_files: dict, tokenizer_dir: Path) -> None:
    data_dir = imported(raw_files, tokenizer_dir, tmp_path / "data")
    uninterrupted = ShardLoader(data_dir, "train", 4, CONTEXT, seed=7)
    expected = [uninterrupted.next_batch()[0] for _ in range(120)]  # past the end of epoch 0
    stopped = ShardLoader(data_dir, "train", 4, CONTEXT, seed=7)
    for _ in range(70):
        stopped.next_batch()
    resumed = ShardLoader(data_dir, "train", 4, CONTEXT, seed=7)
    resumed.load_state_dict(stopped.state_dict())
    for batch in expected[70:]:
        assert torch.equal(resumed.next_batch()[0], batch)


def test_copy_writes_shards_with_the_same_tokens(
    tmp_path: Path, raw_files: dict, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    referenced = imported(raw_files, tokenizer_dir, tmp_path / "referenced")
    copied = imported(raw_files, tokenizer_dir, tmp_path / "copied", copy=True, shard_tokens=1200)
    assert sorted(path.name for path in copied.glob("*.bin")) == [
        "train_000000.bin", "train_000001.bin", "train_000002.bin", "train_000003.bin", "train_000004.bin",
        "val_000000.bin"]
    for split in ("train", "val"):
        np.testing.assert_array_equal(load_split(copied, split), load_split(referenced, split))
    copied_loader, referenced_loader = (ShardLoader(folder, "train", 4, CONTEXT, seed=1) for folder in (copied, referenced))
    for _ in range(5):
        assert torch.equal(copied_loader.next_batch()[0], referenced_loader.next_batch()[0])
    code, out, _ = run(capsys, "data", "info", str(copied), "--verify")
    assert code == 0 and "train: 5,000 tokens" in out and "5 shards" in out and "all shards verified" in out


def test_uint32_files(tmp_path: Path, tokenizer: Tokenizer, tokenizer_dir: Path, capsys: pytest.CaptureFixture) -> None:
    tokens = write_tokens(tmp_path / "t.bin", 500, tokenizer, seed=4, dtype="<u4")
    code, out, _ = run(capsys, "data", "import-raw", "--train", str(tmp_path / "t.bin"), "--val", str(tmp_path / "t.bin"),
                       "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "data"), "--dtype", "uint32",
                       "--no-progress")
    assert code == 0 and "uint32 tokens" in out and "train: 500 tokens" in out and "1 referenced token files" in out
    np.testing.assert_array_equal(load_split(tmp_path / "data", "val"), tokens)


def cli_error(capsys: pytest.CaptureFixture, out: Path, train: list[Path], val: list[Path], tokenizer_dir: Path,
              *extra: str) -> str:
    """The one line of a refused `gpt25 data import-raw` (exit status 2)."""
    code, _, err = run(capsys, "data", "import-raw", "--train", *map(str, train), "--val", *map(str, val),
                       "--tokenizer", str(tokenizer_dir), "--out", str(out), "--no-progress", *extra)
    assert code == 2 and err.count("\n") == 1
    return err


def test_bad_files_are_one_line_and_leave_nothing(
    tmp_path: Path, raw_files: dict, tokenizer: Tokenizer, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    (good, _), (other, _) = raw_files["train"]
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    bad = tmp_path / "bad.bin"
    ids = np.arange(1000, dtype="<u2") % tokenizer.vocab_size
    ids[777] = tokenizer.vocab_size + 5
    ids.tofile(bad)
    out = tmp_path / "new" / "data"
    cases = {
        (odd,): f"token file {odd} is 3 bytes, not a whole number of uint16 tokens; it is empty or truncated, or --dtype is wrong",
        (other, bad): f"token file {bad}: the token at offset 777 is id {tokenizer.vocab_size + 5}, beyond the "
        f"tokenizer's vocab of {tokenizer.vocab_size}; pass the tokenizer the file was made with, or the right --dtype",
        (tmp_path / "gone.bin",): f"--train token file {tmp_path / 'gone.bin'} does not exist; check the path",
    }
    for train, message in cases.items():
        assert cli_error(capsys, out, list(train), [good], tokenizer_dir, "--copy") == f"gpt25 data: error: {message}\n"
        assert not (tmp_path / "new").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.bin", "b.bin", "bad.bin", "odd.bin", "val.bin"]


def test_an_existing_out_needs_force(
    tmp_path: Path, raw_files: dict, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    (good, tokens), _ = raw_files["train"]
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_error(capsys, out, [good], [good], tokenizer_dir) == (
        f"gpt25 data: error: --out {out} already exists; choose another --out or pass --force to replace it\n")
    assert [path.name for path in out.iterdir()] == ["keep.txt"]
    assert cli_error(capsys, tmp_path, [good], [good], tokenizer_dir, "--force") == (
        f"gpt25 data: error: --out {tmp_path} holds the token file {good}, which it would replace; choose another --out\n")
    np.testing.assert_array_equal(np.fromfile(good, dtype="<u2"), tokens)
    code, _, _ = run(capsys, "data", "import-raw", "--train", str(good), "--val", str(good), "--tokenizer",
                     str(tokenizer_dir), "--out", str(out), "--force", "--no-progress")
    assert code == 0 and sorted(path.name for path in out.iterdir()) == ["manifest.json", "tokenizer"]


@pytest.mark.parametrize("change", ["append", "edit"])
def test_a_changed_file_is_refused_when_loading(
    tmp_path: Path, raw_files: dict, tokenizer_dir: Path, capsys: pytest.CaptureFixture, change: str
) -> None:
    data_dir = imported(raw_files, tokenizer_dir, tmp_path / "data")
    changed = raw_files["train"][1][0]
    stat = changed.stat()
    if change == "append":
        with open(changed, "ab") as file:
            file.write(b"\x00\x00")
    else:  # same size, same modification time, one token different
        with open(changed, "r+b") as file:
            file.write(b"\x05\x00")
        os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    message = (f"token file {changed} changed since `gpt25 data import-raw` checked it; "
               "rerun `gpt25 data import-raw --force` to check it again")
    with pytest.raises(ValueError, match=f"^{message}$"):
        ShardLoader(data_dir, "train", 4, CONTEXT)
    code, out, _ = run(capsys, "data", "info", str(data_dir), "--verify")
    assert code == 1 and f"  bad: {message}\n" in out
    changed.unlink()
    with pytest.raises(FileNotFoundError, match=f"^token file {changed} is missing; put it back or rerun"):
        load_split(data_dir, "train")


def test_a_damaged_reference_entry_is_named(tmp_path: Path, raw_files: dict, tokenizer_dir: Path) -> None:
    data_dir = imported(raw_files, tokenizer_dir, tmp_path / "data")
    manifest = json.loads((data_dir / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["bytes"] = "1600"
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"damaged: splits\.val\.shards\[0\]\.bytes is a str \(expected int\)"):
        read_manifest(data_dir)


TINY_TRAIN = ["--d_model", "32", "--num_layers", "2", "--num_heads", "2", "--d_ff", "64", "--context_length", "16",
              "--batch_size", "4", "--train_steps", "3", "--warmup_steps", "1", "--eval_every", "0", "--eval_steps", "2",
              "--log_every", "1", "--save_every", "0", "--device", "cpu", "--seed", "0"]


def test_train_runs_on_an_imported_folder_and_refuses_a_changed_file(
    tmp_path: Path, raw_files: dict, tokenizer_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir = imported(raw_files, tokenizer_dir, tmp_path / "data")
    code, out, err = run(capsys, "train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *TINY_TRAIN)
    assert code == 0, err
    assert "step 3" in out + err
    with open(raw_files["val"][0][0], "ab") as file:
        file.write(b"\x00\x00")
    code, _, err = run(capsys, "train", "--data", str(data_dir), "--out", str(tmp_path / "run2"), *TINY_TRAIN)
    assert code == 2 and err == (f"gpt25 train: error: token file {raw_files['val'][0][0]} changed since `gpt25 data "
                                 "import-raw` checked it; rerun `gpt25 data import-raw --force` to check it again\n")
