"""Ablation: GPT-2, the GPT 2.5 recipe, each of modded-nanogpt's changes added alone to the recipe, and the
gpt25x preset that combines them, trained well past the unigram floor at equal tokens on the CPU.

The question each row answers: how many tokens (and how much wall time) does this variant need to reach
the recipe's final validation loss? Every variant trains on the same token windows in the same order for
each seed (the seed sets the weights and the batch order) with the same schedule length and is scored on
the same validation tokens; the unigram baseline (the train split's token frequencies scored on those
tokens) is printed beside it, so "learned something" is a number.

Data: the shared English corpus (/work/shared/data/english, public-domain novels); the last 10% of each
book is validation. A byte-level BPE of VOCAB tokens is trained on the train split (cached in --out): a
small vocabulary keeps the output layer's matmul from dominating the CPU time. Loss is nats per token;
bits per byte is over the text's UTF-8 bytes.

The step is the trainer's: TransformerLM, build_optimizer (AdamW, or Muon for the hidden matrices),
learning_rate, clip_grad_norm, cross_entropy; the score is gpt25.eval.loss.evaluate_loss. Each run is
written to OUT/runs/ as it ends, and a rerun skips the runs already there (an interrupted ablation resumes).

    uv run python benchmarks/ablation.py --quick           # a smoke run: a few minutes
    uv run python benchmarks/ablation.py                   # 9 variants x 3 seeds, 1M tokens each (~45 min, 2 cores)
    uv run python benchmarks/ablation.py --variants gpt25 "gpt25 +muon" --seeds 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from gpt25.eval.loss import evaluate_loss
from gpt25.model import ModelConfig, TransformerLM
from gpt25.optim import clip_grad_norm, cross_entropy, learning_rate, newton_schulz
from gpt25.tokenizer import Tokenizer
from gpt25.tokenizer.train import train_bpe
from gpt25.train.config import TrainConfig
from gpt25.train.trainer import build_optimizer, set_learning_rate

ENGLISH = Path("/work/shared/data/english")
EOT = "<|endoftext|>"
VAL_FRACTION = 0.1
RECIPE = "gpt25"
# What the gpt25x preset trains with beside its architecture (configs/gpt25x-124m.toml says the same).
PRESET_TRAINING = {"optimizer": "muon", "schedule": "wsd"}
# name -> (architecture, model components changed, training settings changed)
VARIANTS = {
    "gpt2": ("gpt2", {}, {}),
    "gpt25": ("gpt25", {}, {}),
    "gpt25 +muon": ("gpt25", {}, {"optimizer": "muon"}),
    "gpt25 +qk-norm": ("gpt25", {"qk_norm": True}, {}),
    "gpt25 +relu2": ("gpt25", {"mlp": "relu2"}, {}),
    "gpt25 +zero init": ("gpt25", {"init": "zero"}, {}),
    "gpt25 +softcap": ("gpt25", {"logit_softcap": 15.0}, {}),
    "gpt25 +wsd": ("gpt25", {}, {"schedule": "wsd"}),
    "gpt25x": ("gpt25x", {}, PRESET_TRAINING),
    # the recipe's own changes, each applied alone to GPT-2 (not in the default set: --variants names them)
    "gpt2 +rmsnorm": ("gpt2", {"norm": "rmsnorm"}, {}),
    "gpt2 +swiglu": ("gpt2", {"mlp": "swiglu"}, {}),
    "gpt2 +rope": ("gpt2", {"positions": "rope"}, {}),
    "gpt2 -bias": ("gpt2", {"bias": False}, {}),
    "gpt2 untied": ("gpt2", {"tie_embeddings": False}, {}),
    "gpt2 +gpt25 init": ("gpt2", {"init": "gpt25"}, {}),
}
DEFAULT_VARIANTS = list(VARIANTS)[:9]


@dataclass(frozen=True)
class Settings:
    """Model shape, token budget and optimiser, the same for every variant."""

    vocab: int = 1024
    d_model: int = 64
    num_layers: int = 4
    num_heads: int = 4
    context_length: int = 64
    batch_size: int = 64
    train_steps: int = 256
    eval_every: int = 13  # 19 evaluations and the final one: 20 points
    eval_tokens: int = 65_536
    corpus_bytes: int = 5_000_000
    lr: float = 3e-3
    muon_lr: float = 0.04
    min_lr: float = 3e-4
    warmup_steps: int = 10
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context_length

    @property
    def tokens(self) -> int:
        return self.train_steps * self.tokens_per_step


FULL = Settings()
QUICK = replace(FULL, d_model=32, num_layers=2, context_length=32, batch_size=16, train_steps=40, eval_every=4,
                eval_tokens=4_096, corpus_bytes=1_000_000)


@dataclass
class Corpus:
    """Train and validation token ids, and the tokenizer (for bytes per token)."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer


def load_corpus(settings: Settings, cache: Path) -> Corpus:
    """The books' first corpus_bytes / books characters each, split 90/10 inside each book; a BPE of `vocab`
    tokens trained on the train text; both cached under `cache`."""
    folder = cache / f"corpus-{settings.vocab}-{settings.corpus_bytes}"
    if (folder / "tokens.npz").is_file():
        arrays = np.load(folder / "tokens.npz")
        return Corpus(arrays["train"], arrays["val"], Tokenizer.load(folder))
    books = sorted(ENGLISH.glob("*.txt"))
    if not books:
        raise FileNotFoundError(f"needs the English corpus in {ENGLISH}")
    texts = [book.read_text(encoding="utf-8", errors="replace")[: settings.corpus_bytes // len(books)] for book in books]
    cuts = [int(len(text) * (1 - VAL_FRACTION)) for text in texts]
    folder.mkdir(parents=True, exist_ok=True)
    train_text = folder / "train.txt"
    train_text.write_text(f"\n{EOT}\n".join(text[:cut] for text, cut in zip(texts, cuts, strict=True)))
    vocab, merges = train_bpe(train_text, settings.vocab, [EOT])
    tokenizer = Tokenizer(vocab, merges, [EOT])
    eot = tokenizer.token_id(EOT)

    def encode(parts: list[str]) -> np.ndarray:
        return np.concatenate([np.asarray(tokenizer.encode(part) + [eot], dtype=np.int64) for part in parts])

    train = encode([text[:cut] for text, cut in zip(texts, cuts, strict=True)])
    val = encode([text[cut:] for text, cut in zip(texts, cuts, strict=True)])
    tokenizer.save(folder)
    np.savez(folder / "tokens.npz", train=train, val=val)
    return Corpus(train, val, tokenizer)


def unigram_loss(corpus: Corpus, settings: Settings) -> float:
    """Nats per token of the train split's token frequencies (add-one smoothed) on the scored validation tokens."""
    counts = Counter(corpus.train.tolist())
    total = len(corpus.train) + corpus.tokenizer.vocab_size
    targets = corpus.val[1 : settings.eval_tokens + 1].tolist()
    return -statistics.fmean(math.log((counts[token] + 1) / total) for token in targets)


def configs(variant: str, settings: Settings, vocab_size: int) -> tuple[ModelConfig, TrainConfig]:
    arch, changes, training = VARIANTS[variant]
    model = ModelConfig.preset(arch, vocab_size=vocab_size, context_length=settings.context_length,
                               d_model=settings.d_model, num_layers=settings.num_layers,
                               num_heads=settings.num_heads, **changes)
    train = TrainConfig(lr=settings.lr, muon_lr=settings.muon_lr, min_lr=settings.min_lr, beta2=0.95,
                        weight_decay=settings.weight_decay, warmup_steps=settings.warmup_steps,
                        train_steps=settings.train_steps, **training)
    return model, train


def train_variant(variant: str, seed: int, corpus: Corpus, settings: Settings) -> dict:
    """Train one variant from `seed`; returns its validation curve [(tokens, loss, training seconds)], final
    loss and bpb, and its mean seconds per step (evaluation not counted)."""
    model_config, train_config = configs(variant, settings, corpus.tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = TransformerLM(model_config)
    optimizer = build_optimizer(model, train_config)
    batches = np.random.default_rng(seed)  # the same windows, in the same order, for every variant
    curve, seconds = [], 0.0
    for step in range(1, settings.train_steps + 1):
        starts = batches.integers(0, len(corpus.train) - settings.context_length - 1, settings.batch_size)
        window = torch.from_numpy(np.stack([corpus.train[start : start + settings.context_length + 1]
                                            for start in starts]))  # (batch, context + 1)
        started = time.perf_counter()
        set_learning_rate(optimizer, learning_rate(train_config.schedule, step, settings.lr, settings.min_lr,
                                                   settings.warmup_steps, settings.train_steps))
        logits = model(window[:, :-1])  # (batch, context, vocab)
        cross_entropy(logits, window[:, 1:]).backward()
        clip_grad_norm(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
        if step % settings.eval_every == 0 or step == settings.train_steps:
            model.eval()
            scores = evaluate_loss(model, corpus.val, corpus.tokenizer, batch_size=settings.batch_size,
                                   context_length=settings.context_length, device="cpu",
                                   max_tokens=settings.eval_tokens)
            model.train()
            curve.append((step * settings.tokens_per_step, scores["val_loss"], seconds))
    return {"variant": variant, "seed": seed, "curve": curve, "val_loss": scores["val_loss"],
            "val_bpb": scores["val_bpb"], "step_seconds": seconds / settings.train_steps,
            "params": model.num_params(), "flops": model.flops_per_token(), "model": model_config.to_dict(),
            "optimizer": train_config.optimizer, "schedule": train_config.schedule}


def run_key(variant: str, settings: Settings) -> dict:
    """The settings a saved run is reused under: all of them, less Muon's lr for a variant without Muon."""
    key = asdict(settings)
    if VARIANTS[variant][2].get("optimizer") != "muon":
        del key["muon_lr"]
    return key


def reach(curve: list, target: float) -> tuple[float, float] | None:
    """(tokens, training seconds) at which the curve first reaches `target`, interpolated linearly between the
    evaluations around it (from (0, unknown) before the first); None when it never does."""
    previous = None
    for tokens, loss, seconds in curve:
        if loss <= target:
            if previous is None or previous[1] == loss:
                return tokens, seconds
            fraction = (previous[1] - target) / (previous[1] - loss)
            return (previous[0] + fraction * (tokens - previous[0]), previous[2] + fraction * (seconds - previous[2]))
        previous = (tokens, loss, seconds)
    return None


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, list[dict]], settings: Settings, unigram: float) -> str:
    """Markdown table against the recipe: tokens and wall time to reach its final loss (its own are its whole
    run), final loss and bpb, the loss difference and whether it exceeds twice its standard error."""
    recipe = results[RECIPE]
    target, target_std = mean_std([run["val_loss"] for run in recipe])
    recipe_seconds = statistics.mean(run["curve"][-1][2] for run in recipe)
    recipe_step = statistics.mean(run["step_seconds"] for run in recipe)
    lines = [f"unigram baseline {unigram:.3f} nats on the same {settings.eval_tokens:,} val tokens; the recipe's final "
             f"loss {target:.3f} is {unigram - target:.2f} nats below it ({settings.tokens:,} training tokens a run)",
             "", "| variant | tokens to recipe's loss | ratio | wall time to it (s) | ratio | val loss | val bpb | "
             "loss - recipe | beyond seed spread | FLOPs/token | time/step vs recipe |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for variant, runs in results.items():
        losses = [run["val_loss"] for run in runs]
        loss_mean, loss_std = mean_std(losses)
        bpb_mean, bpb_std = mean_std([run["val_bpb"] for run in runs])
        reached = [reach(run["curve"], target) for run in runs]
        if variant == RECIPE:
            reached = [(settings.tokens, run["curve"][-1][2]) for run in runs]
        if all(reached):
            tokens, seconds = (statistics.mean(values) for values in zip(*reached, strict=True))
            reach_cells = (f"{tokens:,.0f}", f"{tokens / settings.tokens:.2f}", f"{seconds:.1f}",
                           f"{seconds / recipe_seconds:.2f}")
        else:
            reach_cells = (f"not reached ({sum(map(bool, reached))}/{len(runs)} seeds)", "", "", "")
        delta = loss_mean - target
        standard_error = math.sqrt(loss_std**2 / len(losses) + target_std**2 / len(recipe))
        verdict = "" if variant == RECIPE else "n/a (1 seed)" if min(len(losses), len(recipe)) < 2 else \
            "yes" if abs(delta) > 2 * standard_error else "no"
        step_ratio = statistics.mean(run["step_seconds"] for run in runs) / recipe_step
        lines.append(f"| {variant} | {' | '.join(reach_cells)} | {loss_mean:.3f} +- {loss_std:.3f} | "
                     f"{bpb_mean:.3f} +- {bpb_std:.3f} | {delta:+.3f} | {verdict} | {runs[0]['flops'] / 1e6:.2f}M | "
                     f"{step_ratio:.2f} |")
    return "\n".join(lines)


def newton_schulz_flops(config: ModelConfig) -> int:
    """FLOPs of Muon's 5 Newton-Schulz steps over one model's hidden matrices: per step, for an (m, n) matrix
    with m <= n, x x^T (2 m^2 n), A^2 (2 m^3) and (b A + c A^2) x (2 m^2 n)."""
    d_model, d_ff = config.d_model, config.d_ff
    shapes = [(d_model, d_model)] * 4 + [(d_model, d_ff)] * (3 if config.mlp == "swiglu" else 2)
    per_layer = sum(5 * (4 * min(s) ** 2 * max(s) + 2 * min(s) ** 3) for s in shapes)
    return per_layer * config.num_layers


def muon_cost(results: dict[str, list[dict]], settings: Settings, vocab_size: int) -> str:
    """The iteration's measured share of a recipe step here, and its FLOP share at 124M with 524,288-token steps."""
    config, _ = configs(RECIPE, settings, vocab_size)
    matrices = [parameter.detach() for name, parameter in TransformerLM(config).named_parameters()
                if parameter.dim() == 2 and "layers." in name]
    newton_schulz(matrices[0])  # warm up
    started = time.perf_counter()
    for _ in range(3):
        for matrix in matrices:
            newton_schulz(matrix)
    measured = (time.perf_counter() - started) / 3
    step = statistics.mean(run["step_seconds"] for run in results[RECIPE])
    model = TransformerLM(config, device="meta")
    here = newton_schulz_flops(config) / (model.flops_per_token() * settings.tokens_per_step)
    big = ModelConfig.preset("gpt25", vocab_size=50304, context_length=1024, d_model=768, num_layers=12,
                             num_heads=12, d_ff=2048)
    big_share = newton_schulz_flops(big) / (TransformerLM(big, device="meta").flops_per_token() * 524_288)
    return (f"Muon's Newton-Schulz here: {measured * 1e3:.1f} ms a step, measured = {measured / step:.1%} of the "
            f"recipe's {step * 1e3:.0f} ms step ({here:.1%} of its FLOPs). At 124M with 524,288-token steps "
            f"(arithmetic, not measured): {newton_schulz_flops(big) / 1e12:.2f} TFLOP a step = {big_share:.2%} of "
            "the step's training FLOPs (each rank repeats it under FSDP, as gpt25 gathers every matrix whole)")


def plot(results: dict[str, list[dict]], target: float, unigram: float, out: Path) -> Path:
    """Validation loss against tokens, the mean over seeds per variant, with the recipe's final loss marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 6))
    colors = plt.get_cmap("tab20").colors
    for index, (variant, runs) in enumerate(results.items()):
        tokens = [point[0] for point in runs[0]["curve"]]
        means = [statistics.mean(run["curve"][i][1] for run in runs) for i in range(len(tokens))]
        axes.plot(tokens, means, "-" if variant in (RECIPE, "gpt25x", "gpt2") else "--",
                  color=colors[index % len(colors)], label=variant)
    axes.axhline(target, color="grey", linewidth=0.8, label="recipe's final loss")
    axes.set_ylim(target - 0.4, unigram + 0.2)
    axes.set_xlabel("training tokens")
    axes.set_ylabel("validation loss (nats/token), mean over seeds")
    axes.legend(fontsize=8, ncol=2)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: smaller model, fewer tokens")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS, metavar="NAME",
                        help=f"variants to train (default: {', '.join(DEFAULT_VARIANTS)}); also {', '.join(VARIANTS)}")
    parser.add_argument("--muon_lr", type=float, help=f"Muon's peak lr (default {FULL.muon_lr})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"),
                        help="folder for runs/, curves.png, table.md and results.json (default runs/ablation)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else FULL
    settings = replace(settings, muon_lr=args.muon_lr or settings.muon_lr)
    variants = list(dict.fromkeys([RECIPE, *args.variants]))  # the recipe's loss is every row's target
    started = time.perf_counter()
    corpus = load_corpus(settings, args.out)
    unigram = unigram_loss(corpus, settings)
    print(f"corpus: {len(corpus.train):,} train / {len(corpus.val):,} val tokens, vocab {corpus.tokenizer.vocab_size:,}"
          f" ({time.perf_counter() - started:.0f} s); {settings.tokens:,} training tokens a run; unigram baseline "
          f"{unigram:.3f} nats on {settings.eval_tokens:,} val tokens", flush=True)
    run_dir = args.out / ("runs-quick" if args.quick else "runs")
    run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    todo = len(variants) * args.seeds
    for seed in range(args.seeds):  # each seed's variants one after another: their wall times share conditions
        for variant in variants:
            path = run_dir / f"{variant.replace(' ', '_')}-seed{seed}.json"
            if path.is_file() and json.loads(path.read_text())["settings"] == run_key(variant, settings):
                results.setdefault(variant, []).append(json.loads(path.read_text())["run"])
                todo -= 1
                continue
            run_started = time.perf_counter()
            run = train_variant(variant, seed, corpus, settings)
            results.setdefault(variant, []).append(run)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps({"settings": run_key(variant, settings), "run": run}))
            temporary.replace(path)
            todo -= 1
            elapsed = time.perf_counter() - run_started
            print(f"{variant} seed {seed}: val loss {run['val_loss']:.3f} ({elapsed:.0f} s; {todo} runs left, "
                  f"~{todo * elapsed / 60:.0f} min at this run's pace)", flush=True)
    report = f"{settings}\n\n{table(results, settings, unigram)}\n\n{muon_cost(results, settings, corpus.tokenizer.vocab_size)}\n"
    print(f"\n{report}")
    (args.out / "table.md").write_text(report)
    (args.out / "results.json").write_text(json.dumps({"settings": asdict(settings), "unigram": unigram,
                                                       "results": results}, indent=1))
    target = statistics.mean(run["val_loss"] for run in results[RECIPE])
    print(f"plot: {plot(results, target, unigram, args.out / 'curves.png')}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
