"""The summary table of benchmarks/gpu_check.sh: each stage's figures beside the issue's targets.

Reads what the stages left in the work folder (JUnit XML of the tests, the benchmarks' JSON, the
runs' metrics.jsonl, the data-scaling timings) and writes OUT/summary.md and OUT/results.json.
Targets are judged on the GPU run only: the dry run's sizes are too small to mean anything.
Exit status: 0 when every stage finished with status 0, else 1.

    python3 benchmarks/gpu_check_report.py --work WORK --out OUT --mode gpu|dry
"""

from __future__ import annotations

import argparse
import json
import statistics
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATASHEET_BF16_FLOPS = 989e12  # H100/H200 SXM dense bf16, the MFU reference
TARGETS = {
    "graph_vs_eager": 5.0, "graph_vs_transformers": 1.5, "train_tokens_per_second": 480_000, "train_mfu": 0.45,
    "sync_cost_percent": 2.0, "scaling_2": 1.8, "scaling_16": 10.0,
}


class Table:
    """Rows of (stage, figure, value, target, verdict); `judge` is False in the dry run."""

    def __init__(self, judge: bool) -> None:
        self.judge, self.rows = judge, []

    def add(self, stage: str, figure: str, value: str, target: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("met" if met else "missed")
        if not self.judge and target:
            verdict = "(dry run)"
        self.rows.append((stage, figure, value, target, verdict))

    def markdown(self) -> str:
        lines = ["| stage | figure | value | target | verdict |", "|---|---|---|---|---|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])


def read_json(path: Path) -> Any:
    """The file's JSON, or None when a stage left none or only part of it."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; a torn last line (a killed run's) is left out."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def junit_counts(path: Path) -> dict | None:
    """{"passed", "failed", "skipped", "failures": [test ids]} of a pytest --junitxml file."""
    if not path.is_file():
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcomes = {child.tag for child in case}
        if outcomes & {"failure", "error"}:
            counts["failed"] += 1
            counts["failures"].append(f"{case.get('classname')}::{case.get('name')}")
        elif "skipped" in outcomes:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def tests_rows(table: Table, stage: str, counts: dict | None) -> None:
    if counts is None:
        table.add(stage, "tests", "no result (see log.txt)", "all pass", False)
        return
    summary = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
    table.add(stage, "tests", summary, "all pass", counts["failed"] == 0 and counts["passed"] > 0)
    for name in counts["failures"][:5]:
        table.add(stage, "failed", name)


def generate_rows(table: Table, results: dict | None) -> None:
    if results is None:
        table.add("2 generate", "benchmarks/generate.py", "no result (see log.txt)", "", False)
    for row in (results or {}).get("rows", []):
        speeds = row["speeds"]
        cached, label = speeds["gpt25 cached"], f"{row['config']} batch {row['batch']}"
        cells = [f"cached {cached:,.0f}"] + [f"{name.removeprefix('gpt25 ')} {value:,.0f}"
                                             for name, value in speeds.items() if name != "gpt25 cached"]
        table.add("2 generate", f"{label} tok/s", ", ".join(cells))
        if "gpt25 eager" in speeds:
            ratio = cached / speeds["gpt25 eager"]
            first = row["config"] == "124m" and row["batch"] == 1
            table.add("2 generate", f"{label} graph / eager", f"{ratio:.2f}x",
                      f">= {TARGETS['graph_vs_eager']}x" if first else "", ratio >= TARGETS["graph_vs_eager"] if first else None)
        ratio = cached / speeds["transformers"]
        table.add("2 generate", f"{label} cached / transformers", f"{ratio:.2f}x",
                  f">= {TARGETS['graph_vs_transformers']}x", ratio >= TARGETS["graph_vs_transformers"])
        agreement = {"vs transformers": row["same"], "vs no cache": row["cache_matches_no_cache"],
                     "graph vs eager": row["graph_matches_eager"]}
        table.add("2 generate", f"{label} greedy ids", ", ".join(
            f"{name} {'same' if same else 'differ'}" for name, same in agreement.items()))


def preset_rows(table: Table, work: Path) -> dict:
    """The gpt25x preset's run beside the recipe's: val loss at each evaluation (equal tokens) and tokens/s."""
    recipe, preset = (read_jsonl(work / name / "metrics.jsonl") for name in ("run", "run_x"))
    rates = [row["tokens_per_second"] for row in preset if row.get("tokens_per_second")][1:]
    if not rates:
        table.add("3 train", "gpt25x run", "no metrics (see log.txt)", "", False)
        return {}
    recipe_loss = {row["step"]: row["val_loss"] for row in recipe if "val_loss" in row}
    pairs = [(row["step"], recipe_loss.get(row["step"]), row["val_loss"]) for row in preset if "val_loss" in row]
    table.add("3 train", "val loss recipe / gpt25x at equal tokens", ", ".join(
        f"{step}: {mine:.3f} / {theirs:.3f}" if mine is not None else f"{step}: - / {theirs:.3f}"
        for step, mine, theirs in pairs))
    table.add("3 train", "gpt25x train tokens/s (median of log windows)", f"{statistics.median(rates):,.0f}")
    return {"tokens_per_second": statistics.median(rates),
            "val_loss": [{"step": step, "recipe": mine, "gpt25x": theirs} for step, mine, theirs in pairs]}


def train_rows(table: Table, work: Path) -> dict:
    rows = read_jsonl(work / "run" / "metrics.jsonl")
    config = read_json(work / "run" / "config.json") or {}
    rates = [row["tokens_per_second"] for row in rows if row.get("tokens_per_second")][1:]  # first: compilation
    if not rates:
        table.add("3 train", "124M run", "no metrics (see log.txt)", "", False)
        return {}
    rate = statistics.median(rates)
    flops_per_token = config["derived"]["flops_per_token"]
    mfu = rate * flops_per_token / DATASHEET_BF16_FLOPS
    memory = max((row.get("memory_gb") or 0) for row in rows)
    losses = [row for row in rows if "train_loss" in row]
    evaluations = [row for row in rows if "val_loss" in row]
    table.add("3 train", "gpt25 train tokens/s (median of log windows)", f"{rate:,.0f}",
              f">= {TARGETS['train_tokens_per_second']:,}", rate >= TARGETS["train_tokens_per_second"])
    table.add("3 train", "MFU of 989 TFLOP/s", f"{mfu:.1%}", f">= {TARGETS['train_mfu']:.0%}", mfu >= TARGETS["train_mfu"])
    table.add("3 train", "peak memory", f"{memory:.1f} GiB")
    table.add("3 train", "steps, final train loss", f"{losses[-1]['step']}, {losses[-1]['train_loss']:.3f}")
    if evaluations:
        table.add("3 train", "val loss by evaluation", ", ".join(f"{row['step']}: {row['val_loss']:.3f}" for row in evaluations))
    return {"tokens_per_second": rate, "mfu_datasheet": mfu, "memory_gib": memory, "flops_per_token": flops_per_token}


def model_step_rows(table: Table, results: dict | None) -> None:
    if results is None:
        table.add("3 model step", "benchmarks/model.py", "no result (see log.txt)", "", False)
    for row in (results or {}).get("rows", []):
        label = f"{row['config']} {row['dtype']} batch {row['batch']}"
        table.add("3 model step", f"{label} tok/s", f"gpt25 {row['gpt25']:,.0f}, transformers {row['transformers']:,.0f}"
                  f" ({row['ratio']:.2f}x)", "> 1.0x", row["ratio"] > 1.0)
        if results["device"] == "cuda":
            mfu = row["gpt25"] * row["flops_per_token"] / DATASHEET_BF16_FLOPS
            table.add("3 model step", f"{label} gpt25 MFU of 989 TFLOP/s", f"{mfu:.1%}")


def sync_rows(table: Table, results: dict | None) -> None:
    cost = (results or {}).get("sync_cost")
    if cost is None:
        table.add("3 NaN guard", "benchmarks/train.py --sync-cost", "no result (see log.txt)", "", False)
    else:
        table.add("3 NaN guard", "step with / without the per-step sync",
                  f"{cost['synced_ms']:.1f} / {cost['asynchronous_ms']:.1f} ms ({cost['sync_cost_percent']:+.1f}%)",
                  f"<= {TARGETS['sync_cost_percent']}%", cost["sync_cost_percent"] <= TARGETS["sync_cost_percent"])


def resume_rows(table: Table, work: Path) -> dict:
    straight = {row["step"]: row["train_loss"] for row in read_jsonl(work / "straight" / "metrics.jsonl") if "train_loss" in row}
    resumed = {row["step"]: row["train_loss"] for row in read_jsonl(work / "resumed" / "metrics.jsonl") if "train_loss" in row}
    status = (work / "interrupted_status").read_text().strip() if (work / "interrupted_status").is_file() else "?"
    resume_step = (work / "resume_step").read_text().strip() if (work / "resume_step").is_file() else "?"
    table.add("4 resume", "SIGTERM: exit status, saved at step", f"{status}, {resume_step}", "143", status == "143")
    after = [step for step in sorted(straight) if resume_step.isdigit() and step > int(resume_step) and step in resumed]
    if not after:
        table.add("4 resume", "losses after the resume", "nothing to compare (see log.txt)", "", False)
        return {}
    differences = [abs(straight[step] - resumed[step]) for step in after]
    identical = sum(difference == 0 for difference in differences)
    table.add("4 resume", "steps after the resume: identical losses", f"{identical} of {len(after)}")
    table.add("4 resume", "largest loss difference after the resume", f"{max(differences):.2e}")
    return {"resume_step": int(resume_step), "compared_steps": len(after), "identical": identical,
            "max_abs_difference": max(differences)}


def scaling_rows(table: Table, work: Path) -> dict:
    path = work / "scaling.tsv"
    timings = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        workers, milliseconds, tokenizing_seconds = line.split("\t")
        timings[int(workers)] = (int(milliseconds) / 1000, float(tokenizing_seconds))
    if 1 not in timings:
        table.add("5 data", "prepare scaling", "no timings (see log.txt)", "", False)
        return {}
    wall_1, tokenizing_1 = timings[1]
    for workers, (wall, tokenizing) in sorted(timings.items()):
        target = {2: TARGETS["scaling_2"], 16: TARGETS["scaling_16"]}.get(workers)
        speedup = wall_1 / wall
        table.add("5 data", f"prepare, {workers} workers: wall s, speed-up (tokenizing phase)",
                  f"{wall:.2f} s, {speedup:.2f}x ({tokenizing_1 / tokenizing:.2f}x)",
                  f">= {target}x" if target else "", speedup >= target if target else None)
    return {str(workers): {"wall_seconds": wall, "tokenizing_seconds": tokenizing}
            for workers, (wall, tokenizing) in timings.items()}


def sft_rows(table: Table, work: Path) -> dict:
    rows = read_jsonl(work / "sft" / "metrics.jsonl")
    rates = [row["tokens_per_second"] for row in rows if row.get("tokens_per_second")][1:]  # first: warm-up
    evaluations = [row for row in rows if "val_loss" in row]
    if not rates or not evaluations:
        table.add("7 SFT, serving", "gpt25 sft", "no metrics (see log.txt)", "", False)
        return {}
    steps = max(row["step"] for row in rows)
    table.add("7 SFT, serving", "gpt25 sft tokens/s (median of log windows)", f"{statistics.median(rates):,.0f}")
    table.add("7 SFT, serving", "held-out assistant loss, token accuracy: first, last evaluation",
              "; ".join(f"step {row['step']}: {row['val_loss']:.3f}, {row['val_accuracy']:.1%}"
                        for row in (evaluations[0], evaluations[-1])))
    table.add("7 SFT, serving", "SFT steps done", str(steps))
    return {"tokens_per_second": statistics.median(rates), "steps": steps,
            "evaluations": [{name: row[name] for name in ("step", "val_loss", "val_accuracy")}
                            for row in (evaluations[0], evaluations[-1])]}


def engine_rows(table: Table, results: dict | None) -> None:
    if results is None:
        table.add("7 SFT, serving", "benchmarks/engine.py", "no result (see log.txt)", "", False)
    for row in (results or {}).get("rows", []):
        label = f"engine {results['config']}, {row['concurrency']} concurrent x {results['max_tokens']} tokens"
        table.add("7 SFT, serving", f"{label}: tok/s", f"engine {row['engine_tokens_per_second']:,.0f}, one at a "
                  f"time {row['one_at_a_time_tokens_per_second']:,.0f} ({row['ratio']:.2f}x)")
        table.add("7 SFT, serving", f"{label}: greedy ids, batch vs alone", "same" if row["same"] else "differ")


def sft_and_serve_rows(table: Table, work: Path) -> dict:
    """The SFT run's figures (returned for results.json) and the engine's rows (in results.json's raw)."""
    figures = sft_rows(table, work)
    engine_rows(table, read_json(work / "engine.json"))
    return figures


def core_rows(table: Table, work: Path) -> dict:
    """CORE of stage 3's checkpoint (`gpt25 eval --core`): on the real bundle, or the small written one."""
    results = read_json(work / "core.json")
    if not results or not results.get("core"):
        table.add("8 CORE", "gpt25 eval --core", "no result (see log.txt)", "", False)
        return {}
    bundle = (work / "core_bundle_used").read_text().strip() if (work / "core_bundle_used").is_file() else "?"
    core = results["core"]
    sizes = sorted({task["n"] for task in core["tasks"].values()})
    table.add("8 CORE", f"CORE of the train stage's checkpoint ({len(core['tasks'])} tasks, {sizes[-1]} examples "
              f"each at most; bundle {bundle})", f"{core['core']:.4f}")
    return {"core": core["core"], "tasks": len(core["tasks"]), "bundle": bundle}


def stage_rows(table: Table, stages: list[list[str]]) -> bool:
    """The stages' exit statuses; True when all finished with 0."""
    for name, status, seconds, budget in stages:
        table.add("stages", name, f"status {status}, {seconds} s of {budget} s")
    return all(status == "0" for _, status, _, _ in stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the check's work folder")
    parser.add_argument("--out", type=Path, required=True, help="where summary.md and results.json go")
    parser.add_argument("--mode", choices=("gpu", "dry"), required=True)
    args = parser.parse_args()
    table = Table(judge=args.mode == "gpu")
    stages = [line.split("\t") for line in (args.out / "stages.tsv").read_text().splitlines()]
    ran = {stage[0] for stage in stages if stage[1] != "skipped"}
    results: dict[str, Any] = {"mode": args.mode}
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("cuda_tests", lambda: tests_rows(table, "1 CUDA tests", junit_counts(args.out / "tests.xml"))),
        ("generate", lambda: generate_rows(table, read_json(args.work / "generate.json"))),
        ("train", lambda: train_rows(table, args.work) | {"preset": preset_rows(table, args.work)}),
        ("model_step", lambda: model_step_rows(table, read_json(args.work / "model.json"))),
        ("sync_cost", lambda: sync_rows(table, read_json(args.work / "sync.json"))),
        ("resume", lambda: resume_rows(table, args.work)),
        ("data_scaling", lambda: scaling_rows(table, args.work)),
        ("sft_and_serve", lambda: sft_and_serve_rows(table, args.work)),
        ("core", lambda: core_rows(table, args.work)),
        ("suite", lambda: tests_rows(table, "6 suite", junit_counts(args.out / "suite.xml"))),
    ]
    for name, section in sections:
        if name in ran:
            results[name] = section()
    results["raw"] = {name: read_json(args.work / f"{name}.json") for name in ("generate", "model", "sync", "engine")}
    all_finished = stage_rows(table, stages)
    text = table.markdown()
    print(text)
    (args.out / "summary.md").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    raise SystemExit(0 if all_finished else 1)


if __name__ == "__main__":
    main()
