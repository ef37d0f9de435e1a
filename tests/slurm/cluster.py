"""The session's Slurm cluster (registered once, by tests/conftest.py, for every test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aiores_slurm.testing import Cluster, available

__all__ = ["slurm_cluster"]


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    why = available()
    if why is not None:
        pytest.fail(f"Slurm cannot run here: {why}")
    cluster = Cluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()  # cancels what is left (each test checks its own jobs)
