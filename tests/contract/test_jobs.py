"""The job contract: ``session.job_service(url)`` on every backend.

A job ends DONE or FAILED with its exit code and captured output; its environment,
working directory and stdin are as described; cancelling a running job ends it
CANCELED with its processes gone; hold/release where the backend queues (else
NotSupported), suspend/resume; arrays keep to ``max_parallel``; a job is found again
by id from a new Session where the backend keeps jobs outside the process.
"""

from __future__ import annotations

import asyncio

import psutil
import pytest

import aiores
from aiores import JobDescription, JobState

from .conftest import STEP, Backend, marker, sleeping, until, workdir

pytestmark = pytest.mark.asyncio


def sh(script: str, **fields: object) -> JobDescription:
    return JobDescription(executable="/bin/sh", arguments=["-c", script], **fields)  # type: ignore[arg-type]


async def refused(backend: Backend) -> bool:
    """True (having checked NotSupported) if the backend has no job service."""
    if backend.has("jobs"):
        return False
    async with backend.session() as session:
        with pytest.raises(aiores.NotSupported):
            session.job_service(backend.jobs_url)
    return True


async def test_done_and_failed_with_exit_code_and_output(backend: Backend) -> None:
    if await refused(backend):
        return
    async with backend.session() as session:
        js = session.job_service(backend.jobs_url)
        failed = await js.submit(sh("echo out; echo err >&2; exit 3"))
        done = await js.submit(JobDescription(executable="/bin/echo", arguments=["a b", "$X"]))
        assert await failed.wait(timeout=STEP) is JobState.FAILED
        assert await done.wait(timeout=STEP) is JobState.DONE
    assert (failed.exit_code, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
    assert (done.exit_code, done.stdout) == (0, "a b $X\n")


async def test_environment_working_directory_and_stdin(backend: Backend) -> None:
    if await refused(backend):
        return
    async with backend.session() as session:
        where = await workdir(session, backend)
        js = session.job_service(backend.jobs_url)
        job = await js.submit(
            sh(
                'pwd -P; printf "%s\\n" "$AIORES_CONTRACT"; cat',
                environment={"AIORES_CONTRACT": "it's $x"},
                working_directory=where,
                stdin=b"from stdin\n",
            )
        )
        assert await job.wait(timeout=STEP) is JobState.DONE, job.stderr
    assert job.stdout == f"{where}\nit's $x\nfrom stdin\n"


async def test_cancel_of_a_running_job(backend: Backend) -> None:
    if await refused(backend):
        return
    mark = marker()
    async with backend.session() as session:
        js = session.job_service(backend.jobs_url)
        job = await js.submit(sh(f"sleep {mark}; echo never"))
        await until(lambda: sleeping(mark), f"sleep {mark} started")
        await job.cancel()
        assert await job.wait(timeout=STEP) is JobState.CANCELED
    await until(lambda: not sleeping(mark), f"sleep {mark} stopped by the cancel")


async def test_hold_and_release(backend: Backend) -> None:
    if await refused(backend):
        return
    async with backend.session() as session:
        js = session.job_service(backend.jobs_url)
        if not backend.has("hold"):
            with pytest.raises(aiores.NotSupported):
                await js.submit(sh("echo held"), hold=True)
            return
        job = await js.submit(sh("echo held"), hold=True)
        assert job.state is JobState.HELD
        await asyncio.sleep(0.2)
        assert job.state is JobState.HELD
        await job.release()
        assert await job.wait(timeout=STEP) is JobState.DONE
    assert job.stdout == "held\n"


async def test_suspend_and_resume(backend: Backend) -> None:
    if await refused(backend):
        return
    mark = marker()
    async with backend.session() as session:
        js = session.job_service(backend.jobs_url)
        job = await js.submit(sh(f"sleep {mark}"))
        (proc,) = await until(lambda: sleeping(mark), f"sleep {mark} started")
        # A stopped process group, or a frozen cgroup (its tasks sleep uninterruptibly).
        held = psutil.STATUS_DISK_SLEEP if backend.has("freezes") else psutil.STATUS_STOPPED
        await job.suspend()
        assert job.state is JobState.SUSPENDED
        await until(lambda: proc.status() == held, "the job stopped")
        await job.resume()
        assert job.state is JobState.RUNNING
        await until(lambda: proc.status() != held, "the job continued")
        await job.cancel()
        assert await job.wait(timeout=STEP) is JobState.CANCELED
    await until(lambda: not sleeping(mark), f"sleep {mark} stopped by the cancel")


def most_at_once(log: str) -> int:
    running = most = 0
    for line in log.split():
        running += 1 if line == "s" else -1
        most = max(most, running)
    return most


async def test_array_with_max_parallel(backend: Backend) -> None:
    if await refused(backend):
        return
    async with backend.session() as session:
        where = await workdir(session, backend)
        js = session.job_service(backend.jobs_url)
        array = await js.submit_array(
            sh(
                'echo s >> log; sleep 0.3; echo e >> log; echo "$AIORES_ARRAY_INDEX"',
                working_directory=where,
            ),
            count=5,
            max_parallel=2,
        )
        assert await array.wait(timeout=STEP) == [JobState.DONE] * 5
        host = await session.command_runner(backend.job_host_url or backend.runner_url)
        log = await host.run(["cat", f"{where}/log"])
    assert [job.stdout for job in array] == [f"{i}\n" for i in range(5)]
    assert log.stdout.split().count("s") == 5
    assert most_at_once(log.stdout) <= 2


async def test_found_again_by_id_from_a_new_session(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    if await refused(backend):
        return
    if not backend.has("job_reconnect"):
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=aiores.DoesNotExist,
                reason="this backend keeps its jobs in the submitting Session's adaptor: a "
                "new Session cannot find a running job by id (DESIGN: jobs outlive their "
                "program, found again from anywhere)",
            )
        )
    async with backend.session() as first:
        job = await first.job_service(backend.jobs_url).submit(sh("sleep 1; echo again"))
        job_id = job.id
    async with backend.session() as second:
        found = await second.job_service(backend.jobs_url).get(job_id)
        assert found.id == job_id
        assert await found.wait(timeout=STEP) is JobState.DONE
    assert (found.exit_code, found.stdout) == (0, "again\n")
