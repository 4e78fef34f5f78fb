"""Training curves like the recipe's results figure, several runs overlaid, as one image (PNG, PDF or SVG).

Manual: docs/training.md ("Plots")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpt25.files import atomic_path
from gpt25.train.tracking import read_metrics

IMAGE_FORMATS = ("png", "pdf", "svg")  # chosen by the output file's suffix
PANELS = (
    ("loss", ("train_loss", "val_loss"), "loss (nats/token)"),
    ("perplexity", ("val_perplexity",), "validation perplexity"),
    ("learning rate", ("lr",), "learning rate"),
    ("throughput", ("tokens_per_second",), "tokens / s"),
    ("bits per byte", ("val_bpb",), "validation bits per byte"),
    ("accuracy", ("hellaswag_acc_norm", "core", "val_accuracy"), "HellaSwag acc_norm / CORE / assistant token accuracy"),
)


def smooth(values: Sequence[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with bias correction, as TensorBoard draws it."""
    smoothed, average = [], 0.0
    for index, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**index))
    return smoothed


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Draw every run's metrics.jsonl onto one figure, written atomically in the format `out`'s suffix names."""
    out = Path(out)
    image_format = out.suffix.lower().lstrip(".")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"--out {out}: the image format comes from the suffix; end it in .png, .pdf or .svg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("give at least one run directory to plot")
    runs = [(Path(run_dir).name or str(run_dir), read_metrics(run_dir)) for run_dir in run_dirs]
    figure, axes = plt.subplots(2, 3, figsize=(16, 9))
    for axis, (title, keys, ylabel) in zip(axes.flat, PANELS, strict=True):
        for run_index, (name, rows) in enumerate(runs):
            color = f"C{run_index}"
            for key in keys:
                points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                style = "--" if key.startswith("val") and title == "loss" else "-"
                if key.startswith("hellaswag"):  # one evaluation is noisy: points and a smoothed line
                    axis.plot(steps, values, "o", color=color, alpha=0.3, markersize=3)
                    axis.plot(steps, smooth(values), style, color=color, label=f"{name} (smoothed)")
                else:
                    axis.plot(steps, values, style, color=color, label=f"{name} {key}" if len(keys) > 1 else name)
        axis.set(title=title, xlabel="step", ylabel=ylabel)
        axis.grid(alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize=8)
            if title == "perplexity":
                axis.set_yscale("log")
        else:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes, color="gray")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        figure.savefig(temporary, dpi=100, format=image_format)
    plt.close(figure)
    return out
