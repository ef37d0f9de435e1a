"""ssh:// end to end through the public API: Session, JobService, Job."""

from __future__ import annotations

import asyncio
import gc
import secrets
import weakref
from pathlib import Path

import pytest

import aiores
from aiores import JobDescription, JobState
from aiores_ssh import pool_for

from .conftest import STEP, gone
from .servers import Sshd


@pytest.mark.asyncio
async def test_jobs_through_a_session(sshd: Sshd) -> None:
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        js = session.job_service(sshd.url())
        job = await js.submit(JobDescription.shell("echo hello; exit 3"))
        async with asyncio.timeout(STEP):
            assert await job.wait() is JobState.FAILED
        assert (job.exit_code, job.stdout) == (3, "hello\n")

        sleeper = await js.submit(JobDescription(executable="/bin/sleep", arguments=["60"]))
        assert sleeper.state is JobState.RUNNING
        await sleeper.cancel()
        async with asyncio.timeout(STEP):
            assert await sleeper.wait() is JobState.CANCELED
        job_id = job.id

        runner = await session.command_runner(sshd.url())
        assert (await runner.run("echo via-runner")).stdout == "via-runner\n"
        # The job service and the runner share the session's one pool and connection.
        assert pool_for(session).connects == 1

    async with aiores.Session(journal=None, contexts=[sshd.context()]) as later:
        again = await later.job_service(sshd.url()).get(job_id)
        assert again.state is JobState.FAILED
        assert again.exit_code == 3


@pytest.mark.asyncio
async def test_array_with_max_parallel(sshd: Sshd, test_home: Path) -> None:
    log = test_home / f"array-{secrets.token_hex(4)}.log"
    # Each job logs its start and end (host clock, ns) to one file, appending lines.
    script = (
        f'echo "$(date +%s%N) 1" >>{log}; sleep 0.3; '
        f'echo "$(date +%s%N) -1" >>{log}; echo "$AIORES_ARRAY_INDEX"'
    )
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        js = session.job_service(sshd.url())
        array = await js.submit_array(JobDescription.shell(script), count=6, max_parallel=2)
        async with asyncio.timeout(STEP * 2):
            states = await array.wait()
        assert states == [JobState.DONE] * 6
        assert [job.stdout for job in array] == [f"{i}\n" for i in range(6)]
    events = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert len(events) == 12
    running = peak = 0
    for _, change in events:  # at one instant, an end (-1) sorts before a start
        running += change
        peak = max(peak, running)
    assert peak == 2  # never more than max_parallel, and that many did run at once
    log.unlink()


@pytest.mark.asyncio
async def test_cancelled_run_through_a_session(sshd: Sshd, test_home: Path) -> None:
    pidfile = test_home / "session-run.pid"
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        runner = await session.command_runner(sshd.url())
        task = asyncio.create_task(runner.run(f"echo $$ > {pidfile}; exec sleep 60"))
        async with asyncio.timeout(STEP):
            while not pidfile.exists():  # noqa: ASYNC110 - a file on the server side
                await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gone(pid)
    pidfile.unlink()


@pytest.mark.asyncio
async def test_any_url_picks_ssh_for_a_remote_host(sshd: Sshd) -> None:
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        runner = await session.command_runner(f"any://{sshd.user}@127.0.0.1:{sshd.port}")
        assert (await runner.run("echo any")).stdout == "any\n"


@pytest.mark.asyncio
async def test_a_closed_session_leaves_no_pool_behind(sshd: Sshd) -> None:
    """The pool, its connections and per-host state go with the session."""
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        runner = await session.command_runner(sshd.url())
        assert (await runner.run("true")).ok
        pool = weakref.ref(pool_for(session))
    await asyncio.sleep(0)
    gc.collect()
    assert pool() is None
