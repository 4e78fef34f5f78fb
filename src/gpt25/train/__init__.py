"""Training: TrainConfig, the loop (`train`), FSDP/DDP wrapping, tracking and plots.

    from gpt25.train import TrainConfig, train, plot_runs
    summary = train(TrainConfig(data="data/", out="runs/small", train_steps=200))
    plot_runs([summary["run_dir"]], "runs/small/curves.png")

`train` and `plot_runs` are imported on first use, so reading TrainConfig (as the `gpt25 train`
parser does) does not import torch.
"""

from typing import Any

from gpt25.train.config import TrainConfig

__all__ = ["TrainConfig", "plot_runs", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from gpt25.train.trainer import train

        return train
    if name == "plot_runs":
        from gpt25.train.plot import plot_runs

        return plot_runs
    raise AttributeError(f"module 'gpt25.train' has no attribute {name!r}")
