"""Recovery and reaping apply backend answers as the watcher does: an id is gone only
after MISSES_BEFORE_GONE describes in a row left it out (EC2 describe is eventually
consistent: an instance may be missing from it right after it was launched)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores._watch import MISSES_BEFORE_GONE
from aiores.adaptor import JobInfo, ResourceInfo
from aiores.testing import POLL_POLICY as POLICY
from aiores.testing import FakeClock, FakeJobs, FakePlugin, FakeResources

T = TypeVar("T")
DESC = ComputeDescription(image="fake-linux", tags={"web"})
JOBS = "fake://?mode=poll"


@pytest.fixture
def lagging(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Ids the fake backend leaves out of its next describes: id -> how many more."""
    hidden: dict[str, int] = {}
    real_resources = FakeResources.describe
    real_jobs = FakeJobs.describe

    def lag(infos: Mapping[str, Any], ids: Sequence[str]) -> dict[str, Any]:
        shown = dict(infos)
        for i in ids:
            if hidden.get(i, 0) > 0:
                hidden[i] -= 1
                shown.pop(i, None)
        return shown

    async def describe_resources(
        self: FakeResources, ids: Sequence[str]
    ) -> Mapping[str, ResourceInfo]:
        return lag(await real_resources(self, ids), ids)

    async def describe_jobs(self: FakeJobs, ids: Sequence[str]) -> Mapping[str, JobInfo]:
        return lag(await real_jobs(self, ids), ids)

    monkeypatch.setattr(FakeResources, "describe", describe_resources)
    monkeypatch.setattr(FakeJobs, "describe", describe_jobs)
    return hidden


async def settle(clock: FakeClock, call: Awaitable[T]) -> tuple[T, list[float]]:
    """Await ``call``, ending each sleep it makes on the clock; returns the steps taken."""
    task = asyncio.ensure_future(call)
    steps: list[float] = []
    while not task.done():
        sleeping = asyncio.ensure_future(clock.wait_for_sleepers())
        await asyncio.wait({task, sleeping}, return_when=asyncio.FIRST_COMPLETED)
        if sleeping.done():
            steps.append(clock.advance_to_next())
        else:
            sleeping.cancel()
            await asyncio.gather(sleeping, return_exceptions=True)
    return task.result(), steps


async def journalled(session: aiores.Session, rid: str) -> tuple[str, list[tuple[str, str]]]:
    assert session.journal is not None
    await session.journal.flush()
    states = {o["id"]: o["state"] for o in await session.journal.objects()}
    return states[rid], await session.journal.transitions(rid)


@pytest.mark.asyncio
async def test_a_resource_missed_once_right_after_launch_is_recovered_not_gone(
    fake: FakePlugin, clock: FakeClock, lagging: dict[str, int]
) -> None:
    async with aiores.Session(clock=clock) as first:
        vm = await first.manager("fake://").acquire(DESC)
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    lagging[vm.native_id] = 1  # not in the first describe yet
    async with aiores.Session(clock=clock) as second:
        found, steps = await settle(clock, second.recover())
        assert (found.gone, found.problems) == ([], [])
        assert [r.id for r in found.resources] == [vm.id]
        (again,) = found.resources
        assert again.state is ResourceState.ACTIVE
        assert again.state_detail == "running"
        # Asked again after the watcher's first interval, and only about the missed id.
        assert steps == [POLICY.floor]
        assert fake.cloud.describe_calls == [1, 1]
        # The change is applied to the object and recorded through it.
        assert await journalled(second, vm.id) == ("ACTIVE", [("PENDING", "ACTIVE")])


@pytest.mark.asyncio
async def test_a_resource_is_gone_after_the_watchers_misses_and_only_then(
    fake: FakePlugin, clock: FakeClock
) -> None:
    async with aiores.Session(clock=clock) as first:
        kept, other, lost = await first.manager("fake://").acquire_many(DESC, 3)
    del fake.cloud.resources[lost.native_id]
    async with aiores.Session(clock=clock) as second:
        found, steps = await settle(clock, second.recover())
        assert found.gone == [lost.id]
        assert found.problems == []
        assert [r.id for r in found.resources] == [kept.id, other.id]
        # One batched describe, then the missing id alone until it missed as often as
        # the watcher needs, spaced as the watcher's ticks are while nothing changes.
        assert fake.cloud.describe_calls == [3] + [1] * (MISSES_BEFORE_GONE - 1)
        assert steps == [POLICY.floor, POLICY.floor * POLICY.backoff]
        assert await journalled(second, lost.id) == ("CANCELED", [("PENDING", "CANCELED")])
        assert await journalled(second, kept.id) == ("PENDING", [])
    async with aiores.Session(clock=clock) as third:  # recorded ended: not asked again
        calls = len(fake.cloud.describe_calls)
        found, steps = await settle(clock, third.recover())
        assert (found.gone, steps) == ([], [])
        assert fake.cloud.describe_calls[calls:] == [2]


@pytest.mark.asyncio
async def test_recovery_stops_asking_within_its_timeout_and_counts_nothing_gone(
    fake: FakePlugin, clock: FakeClock
) -> None:
    async with aiores.Session(clock=clock) as first:
        vm = await first.manager("fake://").acquire(DESC)
    del fake.cloud.resources[vm.native_id]
    async with aiores.Session(clock=clock) as second:
        # The second repeat would come 1 + 2 seconds after the first describe.
        found, steps = await settle(clock, second.recover(timeout=2.5))
        assert steps == [POLICY.floor]
        assert fake.cloud.describe_calls == [1, 1]
        assert found.gone == []
        (problem,) = found.problems
        assert problem.id == vm.id
        assert "not counted gone" in problem.error
        assert await journalled(second, vm.id) == ("PENDING", [])


@pytest.mark.asyncio
async def test_a_job_missed_once_is_recovered_and_one_forgotten_is_lost(
    fake: FakePlugin, clock: FakeClock, lagging: dict[str, int]
) -> None:
    async with aiores.Session(clock=clock) as first:
        service = first.job_service(JOBS)
        late = await service.submit(JobDescription(executable="/bin/true"))
        forgotten = await service.submit(JobDescription(executable="/bin/true"))
    assert late.native_id is not None
    assert forgotten.native_id is not None
    lagging[late.native_id] = 1
    del fake.cloud.jobs[forgotten.native_id]
    async with aiores.Session(clock=clock) as second:
        found, steps = await settle(clock, second.recover())
        assert [j.id for j in found.jobs] == [late.id]
        assert found.jobs[0].state is JobState.RUNNING
        # Its session closed: nobody can reach it again; lost only after the misses.
        assert found.gone == [forgotten.id]
        assert found.problems == []
        assert fake.cloud.describe_calls == [2, 2, 1]
        assert steps == [POLICY.floor, POLICY.floor * POLICY.backoff]
        assert await journalled(second, forgotten.id) == (
            "FAILED",
            [("NEW", "RUNNING"), ("RUNNING", "FAILED")],
        )


@pytest.mark.asyncio
async def test_reap_releases_a_leaked_resource_the_backend_missed_once(
    fake: FakePlugin, clock: FakeClock, lagging: dict[str, int]
) -> None:
    async with aiores.Session(clock=clock) as crashed:
        vm = await crashed.manager("fake://").acquire(DESC)
        crashed_id = crashed.id
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()  # a pid that ran no more: the session's process "died"
    lagging[vm.native_id] = 1
    async with aiores.Session(clock=clock) as session:
        assert session.journal is not None
        await session.journal._call(
            lambda db: db.execute(
                "UPDATE sessions SET pid = ?, ended = NULL WHERE id = ?", (proc.pid, crashed_id)
            )
        )
        reaped, steps = await settle(clock, session.reap())
        assert [(leak.id, leak.reason) for leak in reaped.leaks] == [(vm.id, "session gone")]
        assert reaped.released == [vm.id]
        assert reaped.problems == []
        assert steps == [POLICY.floor]
        assert fake.cloud.alive() == []
        assert await journalled(session, vm.id) == ("CANCELED", [("PENDING", "CANCELED")])
