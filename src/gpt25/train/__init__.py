"""Training: TrainConfig, the loop (`train`), FSDP/DDP wrapping, tracking and plots (`plot_runs`).

Manual: docs/training.md
"""

import importlib
from typing import Any

from gpt25.train.config import TrainConfig

__all__ = ["TrainConfig", "plot_runs", "train"]
# Imported on first use, so reading TrainConfig (as the `gpt25 train` parser does) does not import torch.
_LAZY = {"train": "gpt25.train.trainer", "plot_runs": "gpt25.train.plot"}  # name -> the module that defines it


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'gpt25.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
