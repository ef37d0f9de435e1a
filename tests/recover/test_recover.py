"""Session.recover(): reconnect to what earlier sessions left alive, per the journal."""

from __future__ import annotations

import asyncio

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState

from .conftest import STEP

URL = "sim://?boot_delay=0.05"


@pytest.mark.asyncio
async def test_a_job_started_in_one_session_reports_its_final_state_in_the_next() -> None:
    async with aiores.Session() as first:
        vm = await first.manager(URL).acquire(ComputeDescription(template="tiny", tags={"rj"}))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        job = await vm.job_service().submit(
            JobDescription(executable="/bin/sh", arguments=["-c", "sleep 0.5; echo done; exit 3"])
        )
        assert not job.state.final
    async with aiores.Session() as second:
        found = await second.recover()
        assert found.problems == []
        assert [r.id for r in found.resources] == [vm.id]
        assert [j.id for j in found.jobs] == [job.id]
        (again,) = found.jobs
        async with asyncio.timeout(STEP):
            state = await again.wait()
        assert state is JobState.FAILED
        assert again.exit_code == 3
        await found.resources[0].destroy()
    async with aiores.Session() as third:  # nothing left to recover: both are final
        nothing = await third.recover()
        assert (nothing.resources, nothing.jobs, nothing.problems) == ([], [], [])
        assert third.journal is not None
        (row,) = [o for o in await third.journal.objects("job") if o["id"] == job.id]
        assert row["state"] == "FAILED"


@pytest.mark.asyncio
async def test_resources_come_back_with_their_state_and_changes_are_recorded() -> None:
    desc = ComputeDescription(template="tiny", tags={"rr"})
    async with aiores.Session() as first:
        kept, ended = await first.manager(URL).acquire_many(desc, 2)
    # Ended while nobody watched: destroyed by a program that keeps no journal.
    async with aiores.Session(journal=None) as other:
        await other.manager(URL).destroy(ended.id)
    async with aiores.Session() as second:
        found = await second.recover()
        assert [r.id for r in found.resources] == [kept.id]
        (again,) = found.resources
        assert again.tags == frozenset({"rr"})
        assert again.access is not None
        await again.wait(ResourceState.ACTIVE, timeout=STEP)
        assert second.journal is not None
        await second.journal.flush()
        states = {o["id"]: o["state"] for o in await second.journal.objects("resource")}
        assert states[ended.id] == "CANCELED"
        assert ("PENDING", "CANCELED") in await second.journal.transitions(ended.id)
        await again.destroy()


@pytest.mark.asyncio
async def test_endpoints_that_cannot_load_are_reported_not_raised() -> None:
    async with aiores.Session() as first:
        assert first.journal is not None
        first.journal.record_object(
            id="[nosuch://x]-[n-1]",
            kind="resource",
            url="nosuch://x",
            native_id="n-1",
            token=None,
            state="ACTIVE",
            detail="",
            data={},
        )
    async with aiores.Session() as second:
        found = await second.recover()
        assert found.resources == []
        (problem,) = found.problems
        assert problem.id == "[nosuch://x]-[n-1]"
        assert "IncorrectURL" in problem.error


@pytest.mark.asyncio
async def test_recover_needs_a_journal() -> None:
    async with aiores.Session(journal=None) as session:
        with pytest.raises(aiores.IncorrectState, match="no journal"):
            await session.recover()
        with pytest.raises(aiores.IncorrectState, match="no journal"):
            await session.reap()
