"""Every job backend: a job outlives its program and is found again, waited for, cancelled.

"The program" is a Session here: it submits, then closes (as a program that ends does),
and a new Session finds its jobs by id, as ``JobService.get`` from another program does.
Ending the Session drops every object and adaptor of the first one, so the second one
can only reach the jobs through the backend.
"""

from __future__ import annotations

import pytest

import aiores
from aiores import JobDescription, JobState

from .conftest import STEP, Backend, marker, sleeping, until

pytestmark = pytest.mark.asyncio


def sh(script: str) -> JobDescription:
    return JobDescription(executable="/bin/sh", arguments=["-c", script])


async def test_submit_end_the_program_find_again_wait_cancel(backend: Backend) -> None:
    if not backend.has("jobs"):
        async with backend.session() as session:
            with pytest.raises(aiores.NotSupported):
                session.job_service(backend.jobs_url)
        return
    mark = marker()
    async with backend.session() as first:
        js = first.job_service(backend.jobs_url)
        short = await js.submit(sh("sleep 1; echo again; exit 3"))
        long = await js.submit(JobDescription(executable="sleep", arguments=[mark]))
        ids = (short.id, long.id)
        await until(lambda: sleeping(mark), "the long job running")
    # The first program is over; its jobs are not.
    async with backend.session() as second:
        js = second.job_service(backend.jobs_url)
        short, long = [await js.get(job_id) for job_id in ids]
        assert long.state is JobState.RUNNING
        assert await short.wait(timeout=STEP) is JobState.FAILED
        assert (short.exit_code, short.stdout) == (3, "again\n")
        await long.cancel()
        assert await long.wait(timeout=STEP) is JobState.CANCELED
        await until(lambda: not sleeping(mark), "the cancelled job gone")
