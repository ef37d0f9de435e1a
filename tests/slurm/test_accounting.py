"""slurm:// on a cluster with accounting: jobs that left squeue are read from sacct,
one sacct per watcher tick for all of them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores_slurm.testing import Cluster

from .conftest import STEP, Shim

pytestmark = [pytest.mark.asyncio]


def forgotten(cluster: Cluster, ids: list[str], timeout: float = 60) -> None:
    """Block (in a thread) until squeue no longer lists any of ``ids``."""
    deadline = time.monotonic() + timeout
    while True:
        out = cluster.run("squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}")
        if out.returncode != 0 or not out.stdout.strip():
            return
        assert time.monotonic() < deadline, f"squeue still lists {out.stdout}"
        time.sleep(0.5)


def remove_exit_files(directory: Path) -> None:
    for path in directory.glob("*.exit"):
        path.unlink()


async def test_jobs_that_left_squeue_are_read_from_one_sacct(
    slurm_accounting: Cluster, jobs_dir: Path, shim: Shim
) -> None:
    url = f"slurm://?interval=0.3&conf={slurm_accounting.conf}&dir={jobs_dir}"
    later = JobDescription(executable="/bin/sleep", arguments=["60"], native=["--begin=now+3600"])
    async with aiores.Session() as session:
        js = session.job_service(url)
        done = await js.submit(JobDescription.shell("echo ok"))
        failed = await js.submit(JobDescription.shell("exit 3"))
        array = await js.submit_array(JobDescription.shell('exit "$AIORES_ARRAY_INDEX"'), count=3)
        never = await js.submit(later)  # cancelled before it started: no exit file
        jobs = [done, failed, *array, never]
        # The session ends before they do: only the next one reads their end.
    ids = [str(job.native_id) for job in jobs]
    await asyncio.to_thread(slurm_accounting.run, "scancel", ids[-1])
    await asyncio.to_thread(forgotten, slurm_accounting, ids)
    # Only sacct can tell now: the exit files the batch scripts wrote are gone.
    await asyncio.to_thread(remove_exit_files, jobs_dir)
    shim.reset()

    async with aiores.Session() as session:
        # Recovered together, they are watched together: one describe per tick.
        recovered = {job.native_id: job for job in (await session.recover()).jobs}
        assert set(recovered) == set(ids)
        again = [recovered[job_id] for job_id in ids]
        states = await asyncio.wait_for(asyncio.gather(*(job.wait() for job in again)), STEP)
    assert states == [
        JobState.DONE,
        JobState.FAILED,
        JobState.DONE,
        JobState.FAILED,
        JobState.FAILED,
        JobState.CANCELED,
    ]
    assert [job.exit_code for job in again] == [0, 3, 0, 1, 2, None]
    assert all("from sacct" in job.state_detail for job in again)
    assert again[0].stdout == "ok\n"  # the captured output is still read from its file
    sacct = [line for line in shim.log.read_text().splitlines() if line.startswith("sacct ")]
    assert len(sacct) == shim.counts()["sacct"] == 1, sacct
    assert sacct[0].split("--jobs=", 1)[1].split(",") == ids
