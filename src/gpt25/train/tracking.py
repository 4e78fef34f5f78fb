"""Metrics tracking on rank 0: RUN_DIR/metrics.jsonl always, TensorBoard or Weights & Biases by flag.

Manual: docs/training.md ("What a run writes and shows")
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gpt25.files import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def finite_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with NaN / inf (not JSON; a diverging step's numbers) replaced by None, written as null."""
    return {name: None if isinstance(value, float) and not math.isfinite(value) else value
            for name, value in row.items()}


def json_line(row: dict[str, Any]) -> str:
    # json writes floats in full (repr) precision: resumed runs can be compared bit for bit
    return json.dumps(finite_row(row), allow_nan=False) + "\n"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of RUN_DIR/metrics.jsonl (a torn last line from a killed run is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; is {run_dir} a gpt25 run directory?")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class Tracker:
    """Append-only metrics log plus an optional TensorBoard / W&B mirror."""

    def __init__(self, run_dir: str | Path, kind: str = "none", config: dict | None = None,
                 resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)  # made by the trainer
        self.path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            self._drop_rows_after(resume_step)
        self.handle = self.path.open("a")
        self.backend = self._open_backend(kind, config or {}, resume_step)

    def _drop_rows_after(self, step: int) -> None:
        """Forget rows past the step this run starts from (all of them for a fresh run): they are redone."""
        if not self.path.is_file():
            return
        kept = [row for row in read_metrics(self.run_dir) if row.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(json_line(row) for row in kept))

    def _open_backend(self, kind: str, config: dict, resume_step: int | None) -> Any:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=resume_step)
        if kind == "wandb":
            import wandb

            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            return wandb.init(project=os.environ.get("WANDB_PROJECT", "gpt25"), name=self.run_dir.name,
                              dir=str(self.run_dir), config=config, mode=mode, resume="allow")
        assert kind == "none", kind
        return None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = finite_row({"step": step} | {name: value for name, value in metrics.items() if value is not None})
        self.handle.write(json_line(row))
        self.handle.flush()
        numbers = {name: value for name, value in row.items() if isinstance(value, (int, float)) and name != "step"}
        if hasattr(self.backend, "add_scalar"):  # TensorBoard
            for name, value in numbers.items():
                self.backend.add_scalar(name, value, step)
        elif self.backend is not None:  # W&B
            self.backend.log(numbers, step=step)

    def close(self) -> None:
        self.handle.close()
        if self.backend is not None:
            (self.backend.close if hasattr(self.backend, "add_scalar") else self.backend.finish)()
