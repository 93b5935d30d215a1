"""Shared test setup: paths to the real extracts and a small CPU thread budget."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # CI has 2 cores: more torch threads than cores only adds contention.
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass
    yield
