"""Cancelling acquire or submit at any point leaves nothing behind; cancelling wait does not."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores.testing import FakePlugin

DESC = ComputeDescription(image="fake-linux")


async def cancel_at(point: str, fake: FakePlugin, coro: object) -> None:
    """Run ``coro`` until the backend reaches ``point``, cancel it, expect CancelledError."""
    reached = fake.cloud.pause_at(point)
    task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    del fake.cloud.paused[point]


@pytest.mark.asyncio
@pytest.mark.parametrize("point", ["acquire:before", "acquire:after"])
@pytest.mark.parametrize("count", [1, 7])
async def test_cancelled_acquire_releases_what_was_created(
    session: aiores.Session, fake: FakePlugin, point: str, count: int
) -> None:
    mgr = session.manager("fake://")
    await cancel_at(point, fake, mgr.acquire_many(DESC, count))
    assert fake.cloud.alive() == []
    created = len(fake.cloud.resources)
    assert created == (count if point == "acquire:after" else 0)
    assert session.journal is not None
    (intent,) = await session.journal.intents()
    assert intent.status == "released"
    assert intent.error == "cancelled"
    assert len(intent.ids) == created
    assert await session.journal.in_flight() == []


@pytest.mark.asyncio
async def test_cancel_during_intent_write_calls_no_backend(
    session: aiores.Session, fake: FakePlugin
) -> None:
    assert session.journal is not None
    # Another process holds the journal's write lock: the intent cannot commit yet.
    blocker = await asyncio.to_thread(
        sqlite3.connect, session.journal.path, isolation_level=None, check_same_thread=False
    )
    await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")
    task = asyncio.ensure_future(session.manager("fake://").acquire(DESC))
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done  # still waiting for its intent to be durable
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(blocker.execute, "ROLLBACK")
    await asyncio.to_thread(blocker.close)
    assert "acquire:before" not in fake.cloud.calls
    assert fake.cloud.resources == {}
    (intent,) = await session.journal.intents()
    assert intent.status == "cancelled"
    assert await session.journal.in_flight() == []


@pytest.mark.asyncio
async def test_cancelled_again_during_cleanup_still_releases(
    session: aiores.Session, fake: FakePlugin
) -> None:
    mgr = session.manager("fake://")
    gate = fake.cloud.destroy_delay = asyncio.Event()
    reached = fake.cloud.pause_at("acquire:after")
    task = asyncio.ensure_future(mgr.acquire_many(DESC, 3))
    await reached.wait()
    task.cancel()
    await fake.cloud.arrivals("destroy", 1)  # cleanup is running, blocked in destroy
    task.cancel()  # a second cancellation does not stop the cleanup
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(fake.cloud.alive()) == 3
    gate.set()
    await session._cleanups.drain(None)
    assert fake.cloud.alive() == []


@pytest.mark.asyncio
async def test_cleanup_is_bounded(fake: FakePlugin) -> None:
    async with aiores.Session(cleanup_timeout=0.05) as session:
        fake.cloud.destroy_delay = asyncio.Event()  # destroy never returns
        await cancel_at("acquire:after", fake, session.manager("fake://").acquire(DESC))
        assert session.journal is not None
        # The release did not finish: the intent stays in flight for recovery to find.
        (intent,) = await session.journal.in_flight()
        assert intent.op == "acquire"
        assert intent.count == 1
    assert fake.cloud.destroy_calls == [[next(iter(fake.cloud.resources))]]


@pytest.mark.asyncio
async def test_backend_error_after_creation_releases(
    session: aiores.Session, fake: FakePlugin
) -> None:
    class Boom(aiores.NoSuccess):
        pass

    original = fake.cloud.point

    async def fail_after(name: str) -> None:
        await original(name)
        if name == "acquire:after":
            raise Boom("quota exceeded half way")

    fake.cloud.point = fail_after  # type: ignore[method-assign]
    with pytest.raises(Boom):
        await session.manager("fake://").acquire_many(DESC, 4)
    assert fake.cloud.alive() == []
    assert session.journal is not None
    (intent,) = await session.journal.intents()
    assert intent.status == "released"
    assert "quota exceeded" in (intent.error or "")


@pytest.mark.asyncio
@pytest.mark.parametrize("point", ["submit:before", "submit:after"])
async def test_cancelled_submit_cancels_the_job(
    session: aiores.Session, fake: FakePlugin, point: str
) -> None:
    js = session.job_service("fake://")
    await cancel_at(point, fake, js.submit(JobDescription(executable="/bin/true")))
    assert all(j.state is JobState.CANCELED for j in fake.cloud.jobs.values())
    assert len(fake.cloud.jobs) == (1 if point == "submit:after" else 0)
    assert session.journal is not None
    assert await session.journal.in_flight() == []


@pytest.mark.asyncio
async def test_cancelled_wait_changes_nothing(session: aiores.Session, fake: FakePlugin) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    task = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.cloud.alive() == [vm.native_id]
    assert fake.cloud.destroy_calls == []
    assert vm.state is ResourceState.PENDING
    assert vm._interest == 0


@pytest.mark.asyncio
async def test_acquired_scope_destroys_even_when_cancelled(
    session: aiores.Session, fake: FakePlugin
) -> None:
    mgr = session.manager("fake://")
    inside = asyncio.Event()

    async def use() -> None:
        async with mgr.acquired(DESC) as vm:
            assert vm.state is ResourceState.PENDING
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(use())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake.cloud.alive() == []
    (vm,) = fake.cloud.resources.values()
    assert vm.state is ResourceState.CANCELED


@pytest.mark.asyncio
async def test_cancelled_array_submission_leaves_nothing_running(
    session: aiores.Session, fake: FakePlugin
) -> None:
    js = session.job_service("fake://")
    reached = fake.cloud.pause_at("submit:after")
    task = asyncio.ensure_future(js.submit_array(JobDescription(executable="/bin/true"), count=5))
    await reached.wait()
    await fake.cloud.arrivals("submit:after", 5)  # all five reached the backend
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [j.state for j in fake.cloud.jobs.values()] == [JobState.CANCELED] * 5


@pytest.mark.asyncio
async def test_a_cancelled_submit_whose_job_did_not_stop_stays_pending(
    session: aiores.Session, fake: FakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal says ``released`` only once the backend shows the job ended: a
    cancel that returned while the job still runs leaves the intent pending, for
    recovery to find by its token."""

    async def ignored(self: object, id: str) -> None:
        return None  # the backend took the request; the job runs on

    monkeypatch.setattr("aiores.testing.FakeJobs.cancel", ignored)
    js = session.job_service("fake://")
    await cancel_at("submit:after", fake, js.submit(JobDescription(executable="/bin/true")))
    (job,) = fake.cloud.jobs.values()
    assert job.state is JobState.RUNNING
    assert session.journal is not None
    (intent,) = await session.journal.intents()
    assert intent.status == "pending"
    assert await session.journal.in_flight() == [intent]
