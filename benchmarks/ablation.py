"""Ablation: GPT-2 against the GPT 2.5 recipe, one component at a time, at equal tokens on the CPU.

Variants: GPT-2; the recipe; each of the recipe's changes applied alone to GPT-2 (RMSNorm, SwiGLU,
RoPE, no biases, untied head, the recipe's initialisation); and each removed alone from the recipe.
Every variant trains on the same tokens in the same order for each seed (the seed sets the weights
and the batch order), with the same optimiser settings, and is scored on the same validation text.

Data: the shared English corpus (/work/shared/data/english, public-domain novels), tokenized with
GPT-2's tokenizer (/work/shared/data/gpt2); the last 10% of each book is validation. The model's
vocabulary is the GPT-2 tokens that occur in this text, renumbered (`compact_vocab`): a lossless
relabelling that keeps the 50,257-row output layer, whose matmul would cost most of the CPU time,
from swamping the comparison. Loss is nats per token; bits per byte is over the text's UTF-8 bytes.

The step is the trainer's: TransformerLM, parameter_groups, AdamW, cosine_lr, clip_grad_norm and
cross_entropy from gpt25, and the validation score is gpt25.eval.loss.evaluate_loss. The data
(random windows from one token array in memory) is loaded here, not by `gpt25 train`, because its
shards carry the full GPT-2 vocabulary.

    uv run python benchmarks/ablation.py --quick           # ~5 minutes on 2 idle cores
    uv run python benchmarks/ablation.py                   # ~35 minutes on 2 idle cores: 14 variants x 3 seeds
    uv run python benchmarks/ablation.py --variants gpt2 gpt25 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from gpt25.eval.loss import evaluate_loss
from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, clip_grad_norm, cosine_lr, cross_entropy
from gpt25.tokenizer import Tokenizer

ENGLISH = Path("/work/shared/data/english")
GPT2_FILES = Path("/work/shared/data/gpt2")
EOT = "<|endoftext|>"
VAL_FRACTION = 0.1
# name -> (base architecture, single components changed)
VARIANTS = {
    "gpt2": ("gpt2", {}),
    "gpt2 +rmsnorm": ("gpt2", {"norm": "rmsnorm"}),
    "gpt2 +swiglu": ("gpt2", {"mlp": "swiglu"}),
    "gpt2 +rope": ("gpt2", {"positions": "rope"}),
    "gpt2 -bias": ("gpt2", {"bias": False}),
    "gpt2 untied": ("gpt2", {"tie_embeddings": False}),
    "gpt2 +gpt25 init": ("gpt2", {"init": "gpt25"}),
    "gpt25": ("gpt25", {}),
    "gpt25 +layernorm": ("gpt25", {"norm": "layernorm"}),
    "gpt25 +gelu": ("gpt25", {"mlp": "gelu"}),
    "gpt25 +learned pos": ("gpt25", {"positions": "learned"}),
    "gpt25 +bias": ("gpt25", {"bias": True}),
    "gpt25 tied": ("gpt25", {"tie_embeddings": True}),
    "gpt25 +gpt2 init": ("gpt25", {"init": "gpt2"}),
}


@dataclass(frozen=True)
class Settings:
    """Model shape, token budget and optimiser, the same for every variant."""

    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    context_length: int = 128
    batch_size: int = 8
    train_steps: int = 50
    eval_every: int = 10
    eval_tokens: int = 4_096
    corpus_bytes: int = 1_000_000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 5
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0

    @property
    def tokens(self) -> int:
        return self.train_steps * self.batch_size * self.context_length


FULL = Settings()
QUICK = replace(FULL, d_model=64, num_layers=2, context_length=64, train_steps=30)


@dataclass
class Corpus:
    """Train and validation token ids in the compact vocabulary, and its tokenizer (for bytes per token)."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer


def read_books(corpus_bytes: int) -> list[str]:
    """The first `corpus_bytes / number of books` characters of each book, so every book counts the same."""
    books = sorted(ENGLISH.glob("*.txt"))
    if not books or not GPT2_FILES.is_dir():
        raise FileNotFoundError(f"needs the English corpus in {ENGLISH} and GPT-2's tokenizer in {GPT2_FILES}")
    share = corpus_bytes // len(books)
    return [book.read_text(encoding="utf-8", errors="replace")[:share] for book in books]


def compact_vocab(tokenizer: Tokenizer, ids: np.ndarray) -> tuple[np.ndarray, Tokenizer]:
    """Renumber the ids that occur (and the 256 single bytes, which a Tokenizer needs) as 0..K-1, losslessly;
    returns them and a Tokenizer of those K tokens (no merges: it only tells evaluate_loss each token's
    bytes, and which one is the special token)."""
    eot = tokenizer.token_id(EOT)
    single_bytes = [token_id for token_id, token in tokenizer.vocab.items() if len(token) == 1]
    used = np.setdiff1d(np.union1d(ids, single_bytes), [eot])  # sorted GPT-2 ids
    compact = Tokenizer({new: tokenizer.vocab[int(old)] for new, old in enumerate(used)}, [], [EOT])
    mapping = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    mapping[used] = np.arange(len(used))
    mapping[eot] = compact.token_id(EOT)
    return mapping[ids], compact


def load_corpus(corpus_bytes: int) -> Corpus:
    """GPT-2 tokens of the English books (EOT between books), split 90/10 inside each book, vocab compacted."""
    tokenizer = Tokenizer.from_files(GPT2_FILES / "gpt2_vocab.json", GPT2_FILES / "gpt2_merges.txt", [EOT])
    eot = tokenizer.token_id(EOT)
    train_parts, val_parts = [], []
    for text in read_books(corpus_bytes):
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        cut = int(len(ids) * (1 - VAL_FRACTION))
        train_parts += [ids[:cut], [eot]]
        val_parts += [ids[cut:], [eot]]
    train_ids, val_ids = np.concatenate(train_parts), np.concatenate(val_parts)
    compact, compact_tokenizer = compact_vocab(tokenizer, np.concatenate([train_ids, val_ids]))
    return Corpus(compact[: len(train_ids)], compact[len(train_ids):], compact_tokenizer)


def model_config(variant: str, settings: Settings, vocab_size: int) -> ModelConfig:
    arch, changes = VARIANTS[variant]
    return ModelConfig.preset(arch, vocab_size=vocab_size, context_length=settings.context_length,
                              d_model=settings.d_model, num_layers=settings.num_layers,
                              num_heads=settings.num_heads, **changes)


def train_variant(variant: str, seed: int, corpus: Corpus, settings: Settings) -> dict:
    """Train one variant from `seed`; returns its validation curve [(step, loss)] and final loss and bpb."""
    torch.manual_seed(seed)
    model = TransformerLM(model_config(variant, settings, corpus.tokenizer.vocab_size))
    optimizer = AdamW(parameter_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.95),
                      weight_decay=settings.weight_decay)
    batches = np.random.default_rng(seed)  # the same windows, in the same order, for every variant
    curve = []
    for step in range(1, settings.train_steps + 1):
        starts = batches.integers(0, len(corpus.train) - settings.context_length - 1, settings.batch_size)
        window = torch.from_numpy(np.stack([corpus.train[start : start + settings.context_length + 1]
                                            for start in starts]))  # (batch, context + 1)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, settings.lr, settings.min_lr, settings.warmup_steps, settings.train_steps)
        logits = model(window[:, :-1])  # (batch, context, vocab)
        cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten()).backward()
        clip_grad_norm(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % settings.eval_every == 0 or step == settings.train_steps:
            scores = score(model, corpus, settings)
            curve.append((step, scores["val_loss"]))
    return {"curve": curve, "val_loss": scores["val_loss"], "val_bpb": scores["val_bpb"],
            "params": model.num_params(), "flops": model.flops_per_token()}


def score(model: TransformerLM, corpus: Corpus, settings: Settings) -> dict:
    return evaluate_loss(model, corpus.val, corpus.tokenizer, batch_size=settings.batch_size,
                         context_length=settings.context_length, device="cpu", max_tokens=settings.eval_tokens)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table: size, FLOPs, val loss and bpb (mean +- std over seeds), and the loss difference from
    GPT-2 with whether it exceeds twice its standard error (std of each mean, combined)."""
    base = [run["val_loss"] for run in results.get("gpt2", [])]
    lines = ["| variant | params | FLOPs/token | val loss | val bpb | loss - GPT-2 | beyond seed spread |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for variant, runs in results.items():
        losses = [run["val_loss"] for run in runs]
        loss_mean, loss_std = mean_std(losses)
        bpb_mean, bpb_std = mean_std([run["val_bpb"] for run in runs])
        difference, verdict = "", ""
        if base and variant != "gpt2":
            delta = loss_mean - statistics.mean(base)
            standard_error = math.sqrt(loss_std**2 / len(losses) + mean_std(base)[1] ** 2 / len(base))
            difference = f"{delta:+.3f}"
            verdict = "n/a (1 seed)" if min(len(losses), len(base)) < 2 else "yes" if abs(delta) > 2 * standard_error else "no"
        lines.append(f"| {variant} | {runs[0]['params'] / 1e6:.2f}M | {runs[0]['flops'] / 1e6:.1f}M | "
                     f"{loss_mean:.3f} +- {loss_std:.3f} | {bpb_mean:.3f} +- {bpb_std:.3f} | {difference} | {verdict} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], settings: Settings, out: Path) -> Path:
    """Validation loss against tokens, the mean over seeds per variant; GPT-2-based solid, recipe-based dashed.
    The y axis stops 1 nat above the median first evaluation, so a variant far above the others (named in
    the title) does not flatten the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for variant, runs in results.items():
        steps = [step for step, _ in runs[0]["curve"]]
        means = [statistics.mean(run["curve"][index][1] for run in runs) for index in range(len(steps))]
        curves[variant] = ([step * settings.batch_size * settings.context_length for step in steps], means)
    top = statistics.median(means[0] for _, means in curves.values()) + 1.0
    bottom = min(min(means) for _, means in curves.values()) - 0.05
    figure, axes = plt.subplots(figsize=(9, 6))
    colors = plt.get_cmap("tab20").colors
    for index, (variant, (tokens, means)) in enumerate(curves.items()):
        style = "-" if VARIANTS[variant][0] == "gpt2" else "--"
        axes.plot(tokens, means, style, marker="o", color=colors[index % len(colors)], label=variant)
    off_scale = [variant for variant, (_, means) in curves.items() if means[-1] > top]
    axes.set_ylim(bottom, top)
    axes.set_title("off the scale: " + ", ".join(off_scale) if off_scale else "", fontsize=9)
    axes.set_xlabel("training tokens")
    axes.set_ylabel("validation loss (nats/token), mean over seeds")
    axes.legend(fontsize=8, ncol=2)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the ~5-minute version: smaller model, fewer tokens")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="NAME",
                        help=f"variants to train (default: all): {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"),
                        help="folder for curves.png, table.md and results.json (default runs/ablation)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()
    corpus = load_corpus(settings.corpus_bytes)
    print(f"corpus: {len(corpus.train):,} train / {len(corpus.val):,} val tokens, vocab {corpus.tokenizer.vocab_size:,} "
          f"(GPT-2 tokens in use) in {time.perf_counter() - started:.0f} s; {settings.tokens:,} training tokens per run",
          flush=True)
    results: dict[str, list[dict]] = {}
    for variant in args.variants:
        for seed in range(args.seeds):
            run_started = time.perf_counter()
            results.setdefault(variant, []).append(train_variant(variant, seed, corpus, settings))
            print(f"{variant} seed {seed}: val loss {results[variant][-1]['val_loss']:.3f} "
                  f"({time.perf_counter() - run_started:.0f} s)", flush=True)
    report = f"{settings}\n\n{table(results)}\n"
    print(f"\n{report}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(report)
    (args.out / "results.json").write_text(json.dumps({"settings": asdict(settings), "results": results}, indent=1))
    print(f"plot: {plot(results, settings, args.out / 'curves.png')}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
