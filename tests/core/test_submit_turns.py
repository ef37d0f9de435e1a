"""Job submits gathered by the hundred start a few per loop iteration."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import aiores
from aiores.testing import FakeJobs, FakePlugin

from ..loop_turns import iteration_counter


@pytest.mark.asyncio
async def test_submits_gathered_at_once_reach_the_backend_a_few_per_iteration(
    session: aiores.Session, fake: FakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    now, stop = iteration_counter(asyncio.get_running_loop())
    turns: list[int] = []
    submit = FakeJobs.submit

    async def counted(self: FakeJobs, *args: Any, **kwargs: Any) -> Any:
        turns.append(now())
        return await submit(self, *args, **kwargs)

    monkeypatch.setattr(FakeJobs, "submit", counted)
    js = session.job_service("fake://")
    desc = aiores.JobDescription(executable="/bin/true")
    try:
        async with asyncio.timeout(10):
            jobs = await asyncio.gather(*(js.submit(desc) for _ in range(160)))
    finally:
        stop()
    assert len({job.id for job in jobs}) == 160
    per_iteration = Counter(turns)
    assert len(turns) == 160
    assert max(per_iteration.values()) <= 16
    assert len(per_iteration) >= 10
