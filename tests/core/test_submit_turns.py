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


@pytest.mark.asyncio
async def test_submits_whose_backend_calls_wait_for_each_other_all_get_through(
    session: aiores.Session, fake: FakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of 40 gathered submits' backend call waits until all 40 have reached the
    backend (a barrier), and a submit cancelled while it waits for its turn passes
    it on: the gate is no lock held across the call, so none waits on another."""
    arrived = 0
    everyone = asyncio.Event()
    submit = FakeJobs.submit

    async def together(self: FakeJobs, *args: Any, **kwargs: Any) -> Any:
        nonlocal arrived
        arrived += 1
        if arrived == 40:
            everyone.set()
        await everyone.wait()
        return await submit(self, *args, **kwargs)

    monkeypatch.setattr(FakeJobs, "submit", together)
    js = session.job_service("fake://")
    desc = aiores.JobDescription(executable="/bin/true")
    submits = [asyncio.ensure_future(js.submit(desc)) for _ in range(41)]
    await asyncio.sleep(0)  # every submit ran up to its first turn: 16 got one
    submits[-1].cancel()  # still waiting for its first turn
    async with asyncio.timeout(10):
        jobs = await asyncio.gather(*submits[:-1])
    assert submits[-1].cancelled()
    assert len({job.id for job in jobs}) == 40
