"""wait_any, as_completed and JobArray.wait on the fake backend: deadlines, and no wait
left behind once they return."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores.testing import FakePlugin

JOB = JobDescription(executable="/bin/true")


async def _jobs(session: aiores.Session, count: int) -> list[aiores.Job]:
    js = session.job_service("fake://")
    return [await js.submit(JOB) for _ in range(count)]


def _waited(jobs: list[aiores.Job]) -> list[aiores.Job]:
    """The jobs somebody still waits for."""
    return [job for job in jobs if job._interest]


def _pending(prefix: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


@pytest.mark.asyncio
async def test_wait_any_awaits_the_waits_it_cancels(
    session: aiores.Session, fake: FakePlugin
) -> None:
    jobs = await _jobs(session, 3)
    fake.job_adaptors[0].finish(jobs[1].native_id or "", 0)
    # Awaited directly: nothing runs between wait_any's return and the checks.
    assert await aiores.wait_any(jobs) is jobs[1]
    assert _pending("aiores-wait_any") == []
    assert _waited(jobs) == []


@pytest.mark.asyncio
async def test_wait_any_past_its_deadline_raises_timeout_and_leaves_no_wait(
    session: aiores.Session,
) -> None:
    jobs = await _jobs(session, 3)
    with pytest.raises(aiores.Timeout, match="none of 3 objects reached DONE within 0"):
        await aiores.wait_any(jobs, JobState.DONE, timeout=0)
    assert _pending("aiores-wait_any") == []
    assert _waited(jobs) == []


@pytest.mark.asyncio
async def test_wait_any_raises_the_first_failure_when_none_can_reach_the_state(
    session: aiores.Session, fake: FakePlugin
) -> None:
    jobs = await _jobs(session, 2)
    for job in jobs:
        await job.cancel()
    with pytest.raises(aiores.IncorrectState, match="DONE can no longer come"):
        await aiores.wait_any(jobs, JobState.DONE, timeout=5)


@pytest.mark.asyncio
async def test_as_completed_left_early_leaves_no_wait(
    session: aiores.Session, fake: FakePlugin
) -> None:
    jobs = await _jobs(session, 3)
    fake.job_adaptors[0].finish(jobs[2].native_id or "", 0)
    async with contextlib.aclosing(aiores.as_completed(jobs)) as finished:
        async for job in finished:
            assert job is jobs[2]
            break
    assert _pending("aiores-as_completed") == []
    assert _waited(jobs) == []


@pytest.mark.asyncio
async def test_as_completed_past_its_deadline_says_how_many_are_left(
    session: aiores.Session, fake: FakePlugin
) -> None:
    jobs = await _jobs(session, 3)
    fake.job_adaptors[0].finish(jobs[0].native_id or "", 0)
    seen = []

    async def collect() -> None:
        async with contextlib.aclosing(aiores.as_completed(jobs, timeout=0.5)) as finished:
            async for job in finished:
                seen.append(job)

    # (jobs[0] is final already: its wait ends at once, well within the deadline)
    with pytest.raises(aiores.Timeout, match=r"2 of 3 objects not final within 0\.5 s"):
        await collect()
    assert seen == [jobs[0]]
    assert _pending("aiores-as_completed") == []
    assert _waited(jobs) == []


@pytest.mark.asyncio
async def test_an_array_past_its_deadline_raises_timeout_naming_it(
    session: aiores.Session, fake: FakePlugin
) -> None:
    array = await session.job_service("fake://").submit_array(JOB, count=2)
    with pytest.raises(aiores.Timeout, match=r"JobArray of 2: 2 RUNNING> did not finish within 0"):
        await array.wait(timeout=0)
    for job in array:
        fake.job_adaptors[0].finish(job.native_id or "", 0)
    assert await array.wait(timeout=5) == [JobState.DONE] * 2
