"""slurm:// keeps the number of Slurm commands small: one scancel or scontrol for a
whole array's control, and a bounded number of commands in flight per endpoint."""

from __future__ import annotations

import asyncio

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores_slurm.testing import Cluster

from .conftest import STEP, Shim

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("no_jobs_left")]

SLEEP = JobDescription(executable="/bin/sleep", arguments=["60"])


def calls_of(shim: Shim, name: str) -> list[str]:
    return [line for line in shim.log.read_text().splitlines() if line.startswith(f"{name} ")]


async def test_array_control_is_one_command_for_all_members(slurm_url: str, shim: Shim) -> None:
    later = SLEEP.replace(native=["--begin=now+3600"])  # pending: it can be held
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)
        pending = await js.submit_array(later, count=6)
        running = await js.submit_array(SLEEP, count=5)
        await asyncio.gather(*(job.wait(JobState.RUNNING, timeout=STEP) for job in running))
        shim.reset()

        await pending.hold()
        assert [job.state for job in pending] == [JobState.HELD] * 6
        await pending.release()
        assert [job.state for job in pending] == [JobState.QUEUED] * 6
        await running.suspend()
        assert [job.state for job in running] == [JobState.SUSPENDED] * 5
        await running.resume()
        assert [job.state for job in running] == [JobState.RUNNING] * 5
        await pending.cancel()
        await running.cancel()
        assert [job.state for job in [*pending, *running]] == [JobState.CANCELED] * 11

    counts = shim.counts()
    assert counts["scontrol"] == 4, calls_of(shim, "scontrol")
    assert counts["scancel"] == 2, calls_of(shim, "scancel")
    base = str(pending[0].native_id).split("_")[0]
    other = str(running[0].native_id).split("_")[0]
    assert calls_of(shim, "scontrol") == [
        f"scontrol hold {base}_[0-5]",
        f"scontrol release {base}_[0-5]",
        f"scontrol suspend {other}_[0-4]",
        f"scontrol resume {other}_[0-4]",
    ]
    assert calls_of(shim, "scancel") == [f"scancel {base}_[0-5]", f"scancel {other}_[0-4]"]


async def test_at_most_8_slurm_commands_at_once(
    slurm_url: str, slurm_cluster: Cluster, shim: Shim
) -> None:
    async with aiores.Session() as session:
        js = session.job_service(slurm_url)  # commands= left at its default, 8
        jobs = await asyncio.wait_for(
            asyncio.gather(*(js.submit(SLEEP, hold=True) for _ in range(100))), STEP
        )
        assert shim.counts()["sbatch"] == 100
        # They did overlap (the bound is what held them back), never more than 8.
        assert 2 <= shim.most_at_once("sbatch") <= 8
        ids = sorted(str(job.native_id) for job in jobs)
        await asyncio.to_thread(slurm_cluster.run, "scancel", *ids)
        states = await asyncio.wait_for(asyncio.gather(*(job.wait() for job in jobs)), STEP)
    assert set(states) == {JobState.CANCELED}


async def test_commands_option_is_checked(slurm_cluster: Cluster) -> None:
    async with aiores.Session() as session:
        for bad in ("0", "x", "1.5", "-3", "100000"):
            url = f"slurm://?commands={bad}&conf={slurm_cluster.conf}"
            with pytest.raises(aiores.BadParameter, match="commands="):
                await session.job_service(url).list()
