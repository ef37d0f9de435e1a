"""Session.reap(): release what a killed program was acquiring; touch nothing else."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription
from aiores._recover import Leak
from aiores_sim.testing import SimCloudProcess

from .killed import kill_mid_acquire

URL = "sim://?boot_delay=0.05-0.2"


async def _live(tag: str) -> list[aiores.Resource]:
    async with aiores.Session(journal=None) as session:
        return await session.manager("sim://").list(tags=tag)


@pytest.mark.asyncio
async def test_reap_releases_every_vm_of_an_acquire_killed_midway(
    aiores_sim_cloud: SimCloudProcess,
) -> None:
    # Someone else's VM, unknown to the journal: never touched.
    async with aiores.Session(journal=None) as stranger:
        foreign = await stranger.manager(URL).acquire(ComputeDescription(tags={"kill50"}))
    await asyncio.to_thread(kill_mid_acquire, 50, "kill50", aiores_sim_cloud.directory)
    async with aiores.Session() as session:
        assert session.journal is not None
        (pending,) = await session.journal.in_flight()
        assert pending.count == 50
        asked: list[list[Leak]] = []

        def confirm(leaks: Sequence[Leak]) -> bool:
            asked.append(list(leaks))
            return False

        declined = await session.reap(confirm=confirm)
        assert len(asked[0]) == 50
        assert {leak.token for leak in asked[0]} == {pending.token}
        assert declined.released == []
        assert len(declined.kept) == 50
        assert len(await _live("kill50")) == 51

        reaped = await session.reap()
        assert len(reaped.released) == 50
        assert reaped.closed == [pending.token]
        assert reaped.problems == []
        assert await session.journal.in_flight() == []
        (done,) = [i for i in await session.journal.intents() if i.token == pending.token]
        assert done.status == "released"
        assert len(done.ids) == 50
    assert [vm.native_id for vm in await _live("kill50")] == [foreign.native_id]
    async with aiores.Session(journal=None) as stranger:
        await stranger.manager("sim://").destroy(foreign.id)


@pytest.mark.asyncio
async def test_reap_releases_what_a_killed_session_recorded_but_keeps_closed_sessions(
    state_dir: Path,
) -> None:
    async with aiores.Session() as closed:
        kept = await closed.manager(URL).acquire(ComputeDescription(tags={"keep"}))
    # A session whose process is gone without closing: fake its pid as ended.
    async with aiores.Session() as crashed:
        leaked = await crashed.manager(URL).acquire(ComputeDescription(tags={"leak"}))
        assert crashed.journal is not None
        await crashed.journal.flush()
        dead_pid = await _dead_pid()
        await crashed.journal._call(
            lambda db: db.execute(
                "UPDATE sessions SET pid = ? WHERE id = ?", (dead_pid, crashed.id)
            )
        )
        # Closing writes 'ended': undo that below by reading the id now.
        crashed_id = crashed.id
    async with aiores.Session() as session:
        assert session.journal is not None
        await session.journal._call(
            lambda db: db.execute("UPDATE sessions SET ended = NULL WHERE id = ?", (crashed_id,))
        )
        reaped = await session.reap()
        assert reaped.released == [leaked.id]
        assert [leak.reason for leak in reaped.leaks] == ["session gone"]
        await session.journal.flush()
        states = {o["id"]: o["state"] for o in await session.journal.objects("resource")}
        assert states[leaked.id] == "CANCELED"
    assert [vm.native_id for vm in await _live("keep")] == [kept.native_id]
    assert await _live("leak") == []
    async with aiores.Session() as session:
        await session.manager("sim://").destroy(kept.id)


async def _dead_pid() -> int:
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    assert proc.pid != os.getpid()
    return proc.pid


@pytest.mark.asyncio
async def test_reap_cancels_a_job_whose_submit_never_completed() -> None:
    async with aiores.Session() as setup:
        vm = await setup.manager(URL).acquire(ComputeDescription(tags={"jobleak"}))
        await vm.wait(aiores.ResourceState.ACTIVE, timeout=30)
        assert vm.access is not None
        access = vm.access
    # A program that died in the middle of a submit: its intent is pending, the job runs.
    async with aiores.Session() as crashed:
        await crashed.recover()  # the VM's host key
        adaptor = await crashed.job_adaptor(access)
        assert crashed.journal is not None
        desc = aiores.JobDescription(executable="/bin/sleep", arguments=["300"])
        await crashed.journal.intent("t-jobleak", "submit", access, desc)
        info = await adaptor.submit(desc, "t-jobleak", hold=False)
        crashed_id = crashed.id
        dead_pid = await _dead_pid()
    async with aiores.Session() as session:
        assert session.journal is not None
        await session.journal._call(
            lambda db: db.execute(
                "UPDATE sessions SET pid = ?, ended = NULL WHERE id = ?", (dead_pid, crashed_id)
            )
        )
        reaped = await session.reap()
        assert [(leak.kind, leak.native_id) for leak in reaped.leaks] == [("job", info.id)]
        assert reaped.released == [f"[{access}]-[{info.id}]"]
        assert reaped.closed == ["t-jobleak"]
        job = await session.job_service(access).get(info.id)
        assert await job.wait(timeout=30) is aiores.JobState.CANCELED
        await session.manager(URL).destroy(vm.id)


@pytest.mark.asyncio
async def test_recover_finds_a_job_whose_submit_completed_but_was_never_recorded() -> None:
    # A program killed right after its submit's intent was made durable ('done', naming
    # the job) and before the job itself was recorded: recover still reattaches it.
    url = "local://"
    async with aiores.Session() as crashed:
        adaptor = await crashed.job_adaptor(url)
        assert crashed.journal is not None
        desc = aiores.JobDescription(executable="/bin/sleep", arguments=["300"])
        await crashed.journal.intent("t-unrecorded", "submit", url, desc)
        info = await adaptor.submit(desc, "t-unrecorded", hold=False)
        await crashed.journal.outcome_durable("t-unrecorded", "done", [info.id])
        crashed_id = crashed.id
        dead_pid = await _dead_pid()
    async with aiores.Session() as session:
        assert session.journal is not None
        assert [r for r in await session.journal.objects("job") if r["native_id"] == info.id] == []
        await session.journal._call(
            lambda db: db.execute(
                "UPDATE sessions SET pid = ?, ended = NULL WHERE id = ?", (dead_pid, crashed_id)
            )
        )
        recovered = await session.recover()
        assert [job.native_id for job in recovered.jobs] == [info.id]
        (job,) = recovered.jobs
        assert job.state is aiores.JobState.RUNNING
        await job.cancel()
        assert await job.wait(timeout=30) is aiores.JobState.CANCELED
