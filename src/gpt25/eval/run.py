"""The body of `gpt25 eval` (`run_evaluation`): checkpoint + tokenizer -> eval.json and a table.
Manual: docs/evaluation.md (`gpt25 eval`, Output).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from gpt25.checkpoint import load_for_inference, resolve_checkpoint
from gpt25.device import resolve_device
from gpt25.eval.core import evaluate_core, load_core_tasks
from gpt25.eval.hellaswag import evaluate_hellaswag, load_hellaswag
from gpt25.eval.loss import evaluate_loss
from gpt25.files import write_json_atomic


def check_arguments(data_dir: str | Path | None, hellaswag: str | None, limit: int | None, max_tokens: int | None,
                    out: str | Path | None, batch_size: int, core: bool = False, core_bundle: str | Path | None = None,
                    core_limit: int | None = None) -> None:
    """One-line errors for settings that are wrong or would be ignored, before any work is done."""
    if data_dir is None and hellaswag is None and not core:
        raise ValueError("nothing to evaluate: pass --data DIR (validation loss), --hellaswag FILE|download "
                         "and/or --core")
    if not core and (core_bundle is not None or core_limit is not None):
        raise ValueError("--core_bundle and --core_limit apply to --core; add --core or drop them")
    for name, value in (("--batch_size", batch_size), ("--limit", limit), ("--max_tokens", max_tokens),
                        ("--core_limit", core_limit)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if limit is not None and hellaswag is None:
        raise ValueError("--limit applies to --hellaswag (the number of examples); add --hellaswag or drop --limit")
    if max_tokens is not None and data_dir is None:
        raise ValueError("--max_tokens applies to --data (validation tokens); add --data or drop --max_tokens")
    if out is not None and Path(out).is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name, e.g. --out {Path(out) / 'eval.json'}")


def format_table(results: dict) -> str:
    rows = [("checkpoint", str(results.get("checkpoint"))), ("step", str(results.get("step")))]
    if results["val_loss"] is not None:
        rows += [
            ("val_loss", f"{results['val_loss']:.4f}"),
            ("val_perplexity", f"{results['val_perplexity']:.2f}"),
            ("val_bpb", "n/a" if results["val_bpb"] is None else f"{results['val_bpb']:.4f}"),
            ("val_tokens", f"{results['val_tokens']:,}"),
        ]
    if (hellaswag := results["hellaswag"]) is not None:
        rows += [
            ("hellaswag_acc", f"{hellaswag['acc']:.4f}"),
            ("hellaswag_acc_norm", f"{hellaswag['acc_norm']:.4f}"),
            ("hellaswag_n", f"{hellaswag['n']:,}"),
        ]
    if results.get("core") is not None:
        rows += [(f"core {label}", f"acc {task['acc']:.4f}  centered {task['centered']:+.4f}  "
                                   f"({task['n']:,} examples, {task['shots']}-shot {task['kind']})")
                 for label, task in results["core"]["tasks"].items()]
        rows.append(("CORE", f"{results['core']['core']:.4f}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def run_evaluation(checkpoint: str | Path, tokenizer_dir: str | Path, *, data_dir: str | Path | None = None,
                   hellaswag: str | None = None, limit: int | None = None, core: bool = False,
                   core_bundle: str | Path | None = None, core_limit: int | None = None, max_tokens: int | None = None,
                   out: str | Path | None = None, batch_size: int = 8, device: str | None = None,
                   autocast_dtype: torch.dtype | None = None) -> dict:
    """Score a checkpoint on the validation split of `data_dir`, HellaSwag and/or CORE; write and return eval.json."""
    check_arguments(data_dir, hellaswag, limit, max_tokens, out, batch_size, core, core_bundle, core_limit)
    device = resolve_device(device)
    examples = load_hellaswag(hellaswag) if hellaswag is not None else None
    core_tasks = load_core_tasks(core_bundle, core_limit) if core else None
    model, tokenizer, meta = load_for_inference(checkpoint, tokenizer_dir, device)
    checkpoint = resolve_checkpoint(checkpoint)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    results = {"val_loss": None, "val_perplexity": None, "val_bpb": None, "val_tokens": None, "hellaswag": None,
               "core": None}
    if data_dir is not None:
        from gpt25.data import load_split

        tokens = load_split(data_dir, "val", tokenizer)
        scores = evaluate_loss(model, tokens, tokenizer, batch_size=batch_size,
                               context_length=model.config.context_length, device=device, max_tokens=max_tokens,
                               autocast_dtype=autocast_dtype)
        results |= {key: scores[key] for key in ("val_loss", "val_perplexity", "val_bpb")}
        results["val_tokens"] = scores["tokens"]
    with autocast:  # evaluate_loss casts inside, around the forwards only
        if examples is not None:
            results["hellaswag"] = evaluate_hellaswag(model, tokenizer, examples, batch_size=batch_size * 4,
                                                      device=device, limit=limit)
        if core_tasks is not None:
            results["core"] = evaluate_core(model, tokenizer, core_tasks, batch_size=batch_size * 4, device=device)
    results |= {"checkpoint": str(checkpoint), "step": meta.get("step")}
    if not out:  # eval.json in the step folder, or <name>.eval.json beside a .safetensors file
        out = checkpoint.with_name(f"{checkpoint.stem}.eval.json") if checkpoint.is_file() else checkpoint / "eval.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, results)
    return results
