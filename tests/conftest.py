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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and the test machine's cores are shared.
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def oulad_sample(tmp_path_factory) -> Path:
    """A prepared built-in OULAD sample of 300 registrations; tests only read it."""
    from dsrsd_cli.data.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("oulad_sample") / "oulad"
    prepare_dataset(dataset="oulad", raw=None, out=out, sample_size=300, seed=0)
    return out
