"""Batches for training: ShardLoader (rank-aware, resumable on any number of ranks) and SeededBatches, the
seeded order it shares with conversations.PackedLoader. Manual: docs/data.md (Loading).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from gpt25.data.shards import iter_shards

STATE_VERSION = 1


def _to_device(windows: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Split (batch, context+1) windows into inputs/targets; pinned, non-blocking copies to CUDA."""
    device = torch.device(device)
    inputs = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))  # (batch, context)
    targets = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))  # (batch, context)
    if device.type == "cuda":
        return inputs.pin_memory().to(device, non_blocking=True), targets.pin_memory().to(device, non_blocking=True)
    return inputs.to(device), targets.to(device)


class SeededBatches:
    """What both loaders share: a permutation seeded by (seed, epoch), a state checked against the data on resume."""

    def __init__(self, batch_size: int, rank: int, world_size: int, seed: int, device: str | torch.device) -> None:
        self.batch_size, self.rank, self.world_size, self.seed, self.device = batch_size, rank, world_size, seed, device
        self.position = 0
        self._orders: dict[int, np.ndarray] = {}

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _permutation(self, epoch: int, size: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(size)}
        return self._orders[epoch]

    @staticmethod
    def _check_state(state: dict[str, Any], expected: dict[str, Any], what: str, fix: str) -> None:
        """ValueError naming each saved value that differs from this loader's."""
        mismatched = {key: (state.get(key), value) for key, value in expected.items() if state.get(key) != value}
        if mismatched:
            details = ", ".join(f"{key} saved {saved} vs now {now}" for key, (saved, now) in mismatched.items())
            raise ValueError(f"loader state does not fit {what} ({details}); {fix}")


class ShardLoader(SeededBatches):
    """Sequential, seeded, rank-disjoint batches over a prepared split, resumable to the exact batch."""

    def __init__(self, data_dir: str | os.PathLike, split: str, batch_size: int, context_length: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, device: str | torch.device = "cpu", tokenizer: Any = None) -> None:
        super().__init__(batch_size, rank, world_size, seed, device)
        self.split, self.context_length = split, context_length
        self.shards = [shard for shard in iter_shards(data_dir, split, tokenizer) if len(shard)]
        self.shard_starts = np.cumsum([0] + [len(shard) for shard in self.shards])
        self.num_tokens = int(self.shard_starts[-1])
        # a window (context_length + 1 tokens) starts every context_length: its last token is the next one's
        # first, so every token is a target once and inputs never overlap
        self.num_windows = max(self.num_tokens - 1, 0) // context_length
        if self.num_windows < self.global_batch_size:
            raise ValueError(
                f"split {split!r} of {data_dir} has {self.num_tokens} tokens: too few for one global batch of "
                f"{world_size} x {batch_size} windows of {context_length} tokens; use a shorter context, a smaller batch or more data"
            )
        self.epoch = 0  # self.position: windows of this epoch's permutation consumed by all ranks together

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next (inputs, targets), each (batch_size, context_length) int64 on the device."""
        if self.position + self.global_batch_size > self.num_windows:  # a remainder short of a global batch is skipped
            self.epoch += 1
            self.position = 0
        first = self.position + self.rank * self.batch_size  # rank r takes the r-th run of a global batch
        window_indices = self._permutation(self.epoch, self.num_windows)[first : first + self.batch_size]
        self.position += self.global_batch_size
        windows = np.stack(
            [self._read(int(index) * self.context_length, self.context_length + 1) for index in window_indices]
        )
        return _to_device(windows, self.device)

    def _read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split as int64, crossing shard boundaries as needed."""
        pieces = []
        shard_index = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        while length > 0:
            offset = start - int(self.shard_starts[shard_index])
            piece = self.shards[shard_index][offset : offset + length]
            pieces.append(piece)
            start += len(piece)
            length -= len(piece)
            shard_index += 1
        return np.concatenate(pieces).astype(np.int64) if len(pieces) > 1 else pieces[0].astype(np.int64)

    def _identity(self) -> dict[str, Any]:
        """What a saved state must match: the same windows, visited in the same order."""
        return {"version": STATE_VERSION, "split": self.split, "seed": self.seed,
                "context_length": self.context_length, "num_windows": self.num_windows}

    def state_dict(self) -> dict[str, Any]:
        """Plain ints and strings (safe for torch.save(weights_only=True)); rank and world size are not in it."""
        return self._identity() | {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off; the world size and batch size may differ from the saved run."""
        self._check_state(state, self._identity(), "this data/loader",
                          "resume with the same data, seed and context length")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
