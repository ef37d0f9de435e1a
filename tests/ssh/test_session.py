"""ssh:// end to end through the public API: Session, JobService, Job."""

from __future__ import annotations

import asyncio
import gc
import secrets
import weakref
from pathlib import Path

import psutil
import pytest

import aiores
from aiores import IncorrectState, JobDescription, JobState
from aiores_ssh import SSHCommandRunner, pool_for

from .conftest import STEP, gone, wait_until
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


def _sshd_children(sshd: Sshd) -> set[int]:
    """The processes sshd forked, one (or two) per client connection."""
    assert sshd.process is not None
    return {child.pid for child in psutil.Process(sshd.process.pid).children()}


@pytest.mark.asyncio
async def test_the_pool_is_the_sessions_and_closes_with_it(sshd: Sshd, tmp_path: Path) -> None:
    """Runner, file and job adaptors of a session share one pool; closing the session
    closes its connections (sshd sees them end); a new session has a pool of its own."""
    before = _sshd_children(sshd)
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        runner = await session.command_runner(sshd.url())
        files = await session.file_adaptor(sshd.url())
        jobs = await session.job_adaptor(sshd.url())
        assert isinstance(runner, SSHCommandRunner)
        assert (await runner.run("true")).ok
        assert await files.list("/") != []
        assert await jobs.list() is not None
        pool = pool_for(session)
        assert runner.pool is pool
        assert getattr(files, "pool", None) is pool
        assert getattr(jobs, "pool", None) is pool
        assert pool.connects == 1
        assert pool.live_connections() == 1
        ours = _sshd_children(sshd) - before
        assert ours  # sshd serves the pool's connection
    assert pool.closed
    assert pool.live_connections() == 0
    await wait_until(lambda: not any(psutil.pid_exists(pid) for pid in ours))
    with pytest.raises(IncorrectState):
        pool_for(session)  # a closed session's pool is never handed out again

    async with aiores.Session(journal=None, contexts=[sshd.context()]) as later:
        fresh = pool_for(later)
        assert fresh is not pool
        assert not fresh.closed
        runner = await later.command_runner(sshd.url())
        assert (await runner.run("true")).ok
        assert fresh.connects == 1


@pytest.mark.asyncio
async def test_a_pool_of_bulk_connections_holds_the_heap_frozen_until_it_closes(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a pool has opened heap.BULK connections (2 here) it holds the heap frozen
    (full collections skip its connections' objects); closing the session lets go."""
    from aiores import _heap as heap

    gc.unfreeze()
    monkeypatch.setattr(heap, "BULK", 2)
    try:
        # One channel per connection: two runs at once need two connections.
        context = sshd.context(max_sessions=1)
        async with aiores.Session(journal=None, contexts=[context]) as session:
            runner = await session.command_runner(sshd.url())
            assert (await runner.run("true")).ok
            assert pool_for(session).connects == 1
            assert not heap.held()
            assert gc.get_freeze_count() == 0
            results = await asyncio.gather(runner.run("sleep 0.2"), runner.run("sleep 0.2"))
            assert all(r.ok for r in results)
            assert pool_for(session).connects == 2
            assert heap.held()
            assert gc.get_freeze_count() > 0
        assert not heap.held()
        assert gc.get_freeze_count() == 0
    finally:
        heap._holders.clear()
        heap._frozen = False
        gc.unfreeze()
