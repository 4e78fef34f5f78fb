"""Serving fixtures: a tiny chat model and a base model saved as checkpoints, and a live server on a free port."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import save_model


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> tuple[Path, Path]:
    return save_model(tmp_path_factory.mktemp("chat"), chat=True)


@pytest.fixture(scope="session")
def small_chat_model(tmp_path_factory) -> tuple[Path, Path]:
    """A chat model with a context of 128 byte tokens: a few turns of conversation fill it."""
    return save_model(tmp_path_factory.mktemp("small-chat"), chat=True, context_length=128)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> tuple[Path, Path]:
    return save_model(tmp_path_factory.mktemp("base"), chat=False)
