"""Edge cases: a failing journal, closing under waiters, racing cancellations, bad input."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores.adaptor import JobAdaptor
from aiores.testing import FakePlugin

DESC = ComputeDescription(image="fake-linux")


@pytest.mark.asyncio
async def test_a_failing_journal_write_fails_that_call_only(tmp_path: Path) -> None:
    journal = aiores.Journal(tmp_path / "j.sqlite", "s-test")
    await journal.open()
    with pytest.raises(aiores.NoSuccess, match="too large"):
        await journal.intent("t-1", "acquire", "fake://", {}, count=10**20)
    await journal.intent("t-2", "acquire", "fake://", {}, count=2)  # the writer goes on
    assert [i.token for i in await journal.intents()] == ["t-2"]
    await journal.close()


@pytest.mark.asyncio
async def test_closing_the_session_wakes_its_waiters(fake: FakePlugin) -> None:
    session = aiores.Session(journal=None)
    async with session:
        vm = await session.manager("fake://").acquire(DESC)
        job = await session.job_service("fake://").submit(JobDescription(executable="x"))
        waits = [
            asyncio.ensure_future(vm.wait(ResourceState.ACTIVE)),
            asyncio.ensure_future(job.wait()),
        ]
        await asyncio.sleep(0)
    for waiter in waits:
        with pytest.raises(aiores.IncorrectState, match="closed"):
            await waiter
    with pytest.raises(aiores.IncorrectState, match="closed"):
        await vm.wait(ResourceState.ACTIVE)
    assert vm._interest == 0


@pytest.mark.asyncio
async def test_a_cancelled_open_does_not_cancel_other_callers(fake: FakePlugin) -> None:
    gate = asyncio.Event()
    opened = asyncio.Event()
    calls = 0

    async def slow_open(self: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            opened.set()
            await gate.wait()  # the first opener is cancelled here

    async with aiores.Session(journal=None) as session:
        mgr = session.manager("fake://")
        type(fake.resource_adaptor(mgr.url, session)).open = slow_open  # type: ignore[method-assign]
        try:
            first = asyncio.ensure_future(mgr.acquire(DESC))
            await opened.wait()
            second = asyncio.ensure_future(mgr.acquire(DESC))
            await asyncio.sleep(0)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            vm = await second  # opened again by the second caller, not cancelled
        finally:
            del type(fake.resource_adaptor(mgr.url, session)).open
        assert vm.state is ResourceState.PENDING
        assert calls == 2


@pytest.mark.asyncio
async def test_cancelling_an_array_before_the_backend_call_leaves_nothing(
    session: aiores.Session, fake: FakePlugin
) -> None:
    js = session.job_service("fake://")
    reached = fake.cloud.pause_at("submit:before")
    array_task = asyncio.ensure_future(
        js.submit_array(JobDescription(executable="x"), count=1, max_parallel=1)
    )
    await reached.wait()
    array_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await array_task
    assert list(fake.cloud.jobs) == []  # never reached the backend


@pytest.mark.asyncio
async def test_member_cancelled_during_its_background_submission(
    session: aiores.Session, fake: FakePlugin
) -> None:
    js = session.job_service("fake://")
    array = await js.submit_array(JobDescription(executable="x"), count=2, max_parallel=1)
    first, second = array
    slow = fake.cloud.pause_at("submit:before")
    del fake.cloud.paused["submit:before"]
    gate = asyncio.Event()
    original = fake.cloud.point

    async def hold_second(name: str) -> None:
        await original(name)
        if name == "submit:after" and len(fake.cloud.jobs) == 2:
            slow.set()
            await gate.wait()

    fake.cloud.point = hold_second  # type: ignore[method-assign]
    fake.job_adaptors[0].finish(first.native_id or "", 0)  # frees the slot for member 1
    await slow.wait()  # member 1 is accepted by the backend, its submit not returned
    canceller = asyncio.ensure_future(second.cancel())
    await asyncio.sleep(0)
    assert not canceller.done()  # waits for the submission to end ...
    gate.set()
    await canceller
    # ... and then cancels the job at the backend: nothing is left running there.
    assert second.state is JobState.CANCELED
    assert [j.state for j in fake.cloud.jobs.values()] == [JobState.DONE, JobState.CANCELED]


@pytest.mark.asyncio
async def test_output_reported_once_is_kept(session: aiores.Session, fake: FakePlugin) -> None:
    job = await session.job_service("fake://").submit(JobDescription(executable="x"))
    adaptor = fake.job_adaptors[0]
    native = job.native_id or ""
    done = dataclasses.replace(
        fake.cloud.jobs[native], state=JobState.DONE, exit_code=0, stdout=b"out", stderr=b"err"
    )
    adaptor.publish(done)
    adaptor.publish(dataclasses.replace(done, stdout=None, stderr=None, state_detail="later"))
    assert (job.stdout, job.stderr, job.state_detail) == ("out", "err", "later")


@pytest.mark.asyncio
async def test_a_state_passed_within_one_iteration_still_counts(
    session: aiores.Session, fake: FakePlugin
) -> None:
    js = session.job_service("fake://")
    job = await js.submit(JobDescription(executable="x"), hold=True)
    waiter = asyncio.ensure_future(job.wait(JobState.RUNNING))
    await asyncio.sleep(0)
    adaptor = fake.job_adaptors[0]
    adaptor.set(job.native_id or "", JobState.RUNNING)
    adaptor.finish(job.native_id or "", 0)  # RUNNING, then DONE, before the waiter runs
    assert await waiter is JobState.RUNNING
    assert job.state is JobState.DONE


@pytest.mark.asyncio
async def test_one_adaptor_failing_to_close_does_not_keep_others_open(
    fake: FakePlugin,
) -> None:
    closed: list[str] = []

    async def failing_close(self: object) -> None:
        closed.append("resources")
        raise aiores.ConnectionLost("the backend went away")

    async def close(self: object) -> None:
        closed.append("jobs")

    async with aiores.Session(journal=None) as session:
        mgr = session.manager("fake://")
        js = session.job_service("fake://")
        await mgr.acquire(DESC)
        await js.submit(JobDescription(executable="x"))
        for endpoint in session._endpoints.values():
            kind = "resources" if endpoint.adaptor is not fake.job_adaptors[0] else "jobs"
            endpoint.adaptor.aclose = (  # type: ignore[method-assign]
                failing_close.__get__(endpoint.adaptor)
                if kind == "resources"
                else close.__get__(endpoint.adaptor)
            )
    assert sorted(closed) == ["jobs", "resources"]


@pytest.mark.asyncio
async def test_bad_waits_and_calls(session: aiores.Session, fake: FakePlugin) -> None:
    mgr = session.manager("fake://")
    vm = await mgr.acquire(DESC)
    with pytest.raises(aiores.BadParameter, match="has ResourceState states"):
        await vm.wait(JobState.DONE)  # type: ignore[arg-type]
    with pytest.raises(aiores.BadParameter, match="timeout must be None or a"):
        await vm.wait(timeout="5")  # type: ignore[arg-type]
    with pytest.raises(aiores.BadParameter, match="timeout must be None or a"):
        await vm.wait(timeout=-1)
    with pytest.raises(aiores.BadParameter, match="rtype must be"):
        await mgr.list(rtype="vm")
    with pytest.raises(aiores.BadParameter, match="cleanup_timeout"):
        aiores.Session(cleanup_timeout=0)
    other = session.manager("fake://other")
    with pytest.raises(aiores.BadParameter, match="destroy it with its own manager"):
        await other.destroy(vm)
    assert vm.state is ResourceState.PENDING


def test_a_job_adaptor_must_find_by_token() -> None:
    class NoFind(JobAdaptor):
        async def submit(self, *a: object, **k: object) -> None:  # type: ignore[override]
            raise NotImplementedError

        async def describe(self, ids: object) -> None:  # type: ignore[override]
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract method find"):
        NoFind(aiores.URL.parse("x://"), None)  # type: ignore[abstract, arg-type]


@pytest.mark.asyncio
async def test_reconnected_jobs_are_journalled(fake: FakePlugin) -> None:
    async with aiores.Session(journal=None) as first:  # records nothing
        job = await first.job_service("fake://").submit(JobDescription(executable="x"))
    async with aiores.Session() as second:
        again = await second.job_service("fake://").get(job.id)
        assert second.journal is not None
        await second.journal.flush()
        rows = await second.journal.objects("job")
    assert [(r["id"], r["state"], r["session"]) for r in rows] == [(again.id, "RUNNING", second.id)]
