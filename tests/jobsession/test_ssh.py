"""DRMAA2 job sessions through ssh:// on a simulated VM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores_sim.testing import SimCloudProcess
from tests.sim.conftest import STEP, booted, pinned_context


def sh(script: str) -> JobDescription:
    return JobDescription(executable="/bin/sh", arguments=["-c", script])


@pytest.mark.asyncio
async def test_a_job_session_on_a_vm_over_ssh(
    state_dir: Path, aiores_sim_cloud: SimCloudProcess
) -> None:
    async with booted(1, state_dir=state_dir) as (session, (vm,)):
        assert vm.access is not None
        js = await session.job_session("on-vm", vm.access)
        assert js.url == aiores.URL.parse(vm.access)
        long = await js.submit(sh("sleep 60"))
        array = await js.submit_array(sh('exit "$AIORES_ARRAY_INDEX"'), 1, 3, max_parallel=1)
        async with asyncio.timeout(STEP):
            await long.wait(JobState.RUNNING)
            assert await array.wait() == [JobState.FAILED] * 3
        assert [job.exit_code for job in array] == [1, 2, 3]
        assert await js.wait_any(state=None) is array[0]
        # Another session (nothing known in memory) sees the same jobs and states.
        async with aiores.Session(contexts=[pinned_context(state_dir, [vm])]) as other:
            again = await other.job_session("on-vm")
            seen = await again.jobs()
            assert [job.id for job in seen] == [long.id, *(job.id for job in array)]
            assert [job.state for job in seen] == [JobState.RUNNING, *[JobState.FAILED] * 3]
            (running,) = await again.jobs(state=JobState.RUNNING)
            await running.cancel()
            assert await running.wait(timeout=STEP) is JobState.CANCELED
            await seen[1].reap()
        async with asyncio.timeout(STEP):
            await long.wait()
        assert [job.id for job in await js.jobs()] == [long.id, array[1].id, array[2].id]
        await js.destroy()
        assert await session.job_session_names() == []
