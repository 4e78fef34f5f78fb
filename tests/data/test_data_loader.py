"""ShardLoader: window contents, rank-disjointness, exact resume (also across world sizes)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt25.data import load_split
from gpt25.data.loader import ShardLoader
from gpt25.tokenizer import Tokenizer

CONTEXT = 16


def collect(loader: ShardLoader, num_batches: int) -> list[torch.Tensor]:
    return [loader.next_batch()[0] for _ in range(num_batches)]


def batches_per_epoch(loader: ShardLoader) -> int:
    """Whole global batches in an epoch: the remainder is skipped."""
    return loader.num_windows // loader.global_batch_size


def test_windows_follow_the_split(prepared: tuple[Path, list[str]]) -> None:
    """Each row is a window of the concatenated split, crossing shard boundaries (shards hold 500 tokens)."""
    data_dir, _ = prepared
    tokens = load_split(data_dir, "train").astype(np.int64)
    loader = ShardLoader(data_dir, "train", 4, CONTEXT, seed=3)
    assert loader.num_windows == (len(tokens) - 1) // CONTEXT
    seen = []
    for _ in range(batches_per_epoch(loader)):
        inputs, targets = loader.next_batch()
        for row_inputs, row_targets in zip(inputs.numpy(), targets.numpy(), strict=True):
            start = (
                int(
                    np.flatnonzero(
                        np.all(
                            np.lib.stride_tricks.sliding_window_view(tokens, CONTEXT)[::CONTEXT] == row_inputs, axis=1
                        )
                    )[0]
                )
                * CONTEXT
            )
            np.testing.assert_array_equal(row_targets, tokens[start + 1 : start + CONTEXT + 1])
            seen.append(start // CONTEXT)
    assert len(seen) == len(set(seen)) == batches_per_epoch(loader) * 4


def test_ranks_are_disjoint_and_cover_the_global_batch(prepared: tuple[Path, list[str]]) -> None:
    data_dir, _ = prepared
    single = ShardLoader(data_dir, "train", 6, CONTEXT, seed=1)
    ranks = [ShardLoader(data_dir, "train", 3, CONTEXT, rank=rank, world_size=2, seed=1) for rank in range(2)]
    for _ in range(5):
        rank_inputs = [loader.next_batch()[0] for loader in ranks]
        rows = [tuple(row) for batch in rank_inputs for row in batch.tolist()]
        assert len(set(rows)) == 6
        assert torch.equal(torch.cat(rank_inputs), single.next_batch()[0])


def test_resume_gives_the_uninterrupted_batches(prepared: tuple[Path, list[str]]) -> None:
    data_dir, _ = prepared
    uninterrupted = collect(ShardLoader(data_dir, "train", 32, CONTEXT, seed=7), 40)  # crosses an epoch boundary
    first = ShardLoader(data_dir, "train", 32, CONTEXT, seed=7)
    collect(first, 13)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = ShardLoader(data_dir, "train", 32, CONTEXT, seed=7)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for expected, actual in zip(uninterrupted[13:], collect(resumed, 27), strict=True):
        assert torch.equal(actual, expected)
    assert resumed.epoch >= 1 and batches_per_epoch(ShardLoader(data_dir, "train", 32, CONTEXT, seed=7)) < 40


def test_resume_with_another_world_size(prepared: tuple[Path, list[str]]) -> None:
    """Saved by 2 ranks x batch 2, resumed by 1 rank x batch 4 (same global batch): same next global batches."""
    data_dir, _ = prepared
    reference = ShardLoader(data_dir, "train", 4, CONTEXT, seed=2)
    expected = collect(reference, 9)[5:]
    ranks = [ShardLoader(data_dir, "train", 2, CONTEXT, rank=rank, world_size=2, seed=2) for rank in range(2)]
    for loader in ranks:
        collect(loader, 5)
    assert ranks[0].state_dict() == ranks[1].state_dict()
    resumed = ShardLoader(data_dir, "train", 4, CONTEXT, seed=2)
    resumed.load_state_dict(ranks[0].state_dict())
    for batch in expected:
        assert torch.equal(resumed.next_batch()[0], batch)


def test_epochs_use_different_orders(prepared: tuple[Path, list[str]]) -> None:
    data_dir, _ = prepared
    loader = ShardLoader(data_dir, "train", 4, CONTEXT, seed=0)
    epoch0 = torch.cat(collect(loader, batches_per_epoch(loader)))
    epoch1 = torch.cat(collect(loader, batches_per_epoch(loader)))
    assert loader.epoch == 1 and not torch.equal(epoch0, epoch1)
    assert sorted(map(tuple, epoch0.tolist())) == sorted(map(tuple, epoch1.tolist()))


def test_loader_bad_input(prepared: tuple[Path, list[str]], shared_data: Path) -> None:
    data_dir, _ = prepared
    with pytest.raises(ValueError, match="too few for one global batch"):
        ShardLoader(data_dir, "val", 64, 512)
    loader = ShardLoader(data_dir, "train", 4, CONTEXT, seed=1)
    with pytest.raises(ValueError, match="seed saved 1 vs now 2"):
        ShardLoader(data_dir, "train", 4, CONTEXT, seed=2).load_state_dict(loader.state_dict())
    gpt2 = Tokenizer.from_files(
        shared_data / "gpt2" / "gpt2_vocab.json", shared_data / "gpt2" / "gpt2_merges.txt", ["<|endoftext|>"]
    )
    with pytest.raises(ValueError, match="were made with tokenizer"):
        ShardLoader(data_dir, "train", 4, CONTEXT, tokenizer=gpt2)
