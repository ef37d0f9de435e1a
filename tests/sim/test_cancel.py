"""Cancelling submits to a sim:// VM's job service at random points leaves no job running."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..cancel_trials import cancel_submits
from .conftest import booted


@pytest.mark.asyncio
@pytest.mark.timeout(180)
async def test_cancelling_submits_at_random_points_leaves_no_job_running(
    state_dir: Path,
) -> None:
    """A submit cancelled anywhere in its start-up leaves no job running on the VM, and
    no submit intent stays open: each cancel was confirmed by the VM."""
    async with booted(1, state_dir=state_dir) as (session, [vm]):
        found = await cancel_submits(session, vm.job_service(), trials=40, seed=2024)
    assert found.left_running == [], str(found)
    assert "pending" not in found.statuses, str(found)
    assert found.inside >= 10, str(found)  # most draws land inside the submit
