"""Shared fixtures: the optional shared data folder beside the checkout, and seeding."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

# The processes that tests start (the CLI, the demo) get one OpenMP thread, as the tests themselves do (below):
# CI runs two test workers on two cores, so a second thread per process only competes for a core that the other
# worker is using, and OpenMP's barriers then wait for it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(os.environ.get("GPT25_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; the test skips when it is absent (a fresh clone alone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set GPT25_SHARED_DATA to run this test)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tests' models are tiny: one thread is fastest, and idle OpenMP workers crawl on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:
        pass


# The files that take minutes (their module fixtures run whole pipelines), started first: CI gives test files to its two
# workers in collection order (`--dist loadfile --no-loadscope-reorder`), so the short files fill in around them.
LONGEST_FILES = ("tests/test_demo.py", "tests/test_gpu_check.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (the order within each file kept); tests marked `cuda` skip, with the reason, on a
    machine without a CUDA GPU."""
    import torch

    items.sort(key=lambda item: item.nodeid.split("::")[0] not in LONGEST_FILES)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
