"""Fixtures for the recovery tests: the test session's sim cloud for every test."""

from __future__ import annotations

import pytest

from aiores_sim.testing import SimCloudProcess

__all__ = ["STEP"]

#: Seconds any one await in these tests may take before the test fails.
STEP = 30.0


@pytest.fixture(autouse=True)
def _cloud(aiores_sim_cloud: SimCloudProcess) -> SimCloudProcess:
    """Every recovery test reaches the session's cloud."""
    return aiores_sim_cloud
