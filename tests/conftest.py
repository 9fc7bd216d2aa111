"""Shared fixtures: paths to ../shared (real models and data)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLIMFORMER_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, skipping the test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


@pytest.fixture
def stories_dir() -> Path:
    return shared_path("models", "stories260k")


@pytest.fixture
def tinystories_train() -> Path:
    return shared_path("data", "tinystories", "tinystories_train_prefix.txt")


@pytest.fixture
def tinystories_valid() -> Path:
    return shared_path("data", "tinystories", "tinystories_valid_prefix.txt")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models gain nothing from more threads, and a busy 2-core machine makes
    oversubscribed OpenMP threads spin (10-50x slow-downs were seen). Timing lives in benchmarks/."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
