"""benchmarks/gpu_check.sh --cpu-dry-run: every stage of the GPU check runs at tiny sizes on the CPU, and its
summary reads the figures the stages left (so the one GPU lease is not spent finding a typo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GPT25_SHARED_DATA", ROOT.parent / "shared" / "data"))  # absent: the embedded corpus
STAGES = ["setup", "cuda_tests", "generate", "train", "model_step", "sync_cost", "resume", "data_scaling", "sft_and_serve",
          "core", "suite"]


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_stage_and_summarises_them(tmp_path: Path) -> None:
    env = os.environ | {"OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "GPT25_GPU_DATA": str(SHARED_DATA),
                        "OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run"], env=env,
                            capture_output=True, text=True, timeout=1900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    stages = [line.split("\t") for line in (tmp_path / "out" / "stages.tsv").read_text().splitlines()]
    assert [(name, status) for name, status, _, _ in stages] == [(name, "0") for name in STAGES]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["mode"] == "dry" and results["train"]["tokens_per_second"] > 0
    assert results["train"]["preset"]["tokens_per_second"] > 0 and results["train"]["preset"]["val_loss"]
    assert results["resume"]["compared_steps"] > 0
    assert results["resume"]["identical"] == results["resume"]["compared_steps"]  # one thread: bit for bit
    assert set(results["data_scaling"]) == {"1", "2"}
    assert results["raw"]["generate"]["rows"][0]["same"] and results["raw"]["sync"]["sync_cost"]["synced_ms"] > 0
    sft = results["sft_and_serve"]  # 4 steps from the train stage's checkpoint, evaluated at steps 2 and 4
    assert sft["steps"] == 4 and sft["tokens_per_second"] > 0
    assert [evaluation["step"] for evaluation in sft["evaluations"]] == [2, 4]
    first, last = sft["evaluations"]
    assert 0 < last["val_loss"] < first["val_loss"]  # the held-out assistant loss falls (one thread: deterministic)
    engine = results["raw"]["engine"]["rows"]
    assert [row["concurrency"] for row in engine] == [1, 8, 32] and all(row["same"] for row in engine)
    assert all(row["engine_tokens_per_second"] > 0 and row["one_at_a_time_tokens_per_second"] > 0 for row in engine)
    assert results["core"]["tasks"] == 3 and -1 <= results["core"]["core"] <= 1  # the small written bundle
    summary = (tmp_path / "out" / "summary.md").read_text()
    for stage in ("1 CUDA tests", "2 generate", "3 train", "3 model step", "3 NaN guard", "4 resume", "5 data",
                  "7 SFT, serving", "8 CORE", "6 suite"):
        assert f"| {stage} |" in summary, stage
    assert re.search(r"\| 6 suite \| tests \| [1-9]\d* passed, 0 failed", summary)  # the dry run's one test file
    stage_headers = re.findall(r"^=== \d+s: ", (tmp_path / "out" / "log.txt").read_text(), flags=re.MULTILINE)
    assert len(stage_headers) == len(STAGES) + 1  # every stage and the summary; pytest's own "===" lines excluded


def test_the_engine_benchmark_imports_without_the_http_packages() -> None:
    """The GPU machine has no fastapi, uvicorn or httpx: benchmarks/engine.py must not need them."""
    blocked = "import sys; sys.modules.update(fastapi=None, uvicorn=None, httpx=None); import engine"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT / "src")])}
    result = subprocess.run([sys.executable, "-c", blocked], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
