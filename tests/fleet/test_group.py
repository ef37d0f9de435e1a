"""Fan-out semantics on sim VMs: killed hosts, timeouts, deadline, limit, cancel, streams."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

import aiores
from aiores import ComputeDescription, Group

from .conftest import FAST, STEP, until_gone, until_running


@contextlib.asynccontextmanager
async def machines(session: aiores.Session, count: int) -> AsyncIterator[Group]:
    """``count`` ACTIVE sim VMs as a group, destroyed at the end."""
    async with session.fleet() as fleet:
        fleet.provision(FAST, ComputeDescription(template="tiny"), count=count)
        yield await fleet.wait(timeout=STEP)


def slow_unless_marked(mark: str) -> str:
    """A command that sleeps 30 s (as ``sleep 30.<mark>``) on VMs holding a file ``slow``."""
    return f"if [ -e slow ]; then exec sleep 30.{mark}; fi; [ -e fail ] && exit 3; echo fast"


@pytest.mark.asyncio
async def test_a_host_killed_mid_run_fails_alone(session: aiores.Session, mark: str) -> None:
    async with machines(session, 4) as group:
        await group[1].run("touch slow")
        await group[2].run("touch fail")
        task = asyncio.create_task(group.run(slow_unless_marked(mark)))
        await until_running(mark, 1)
        await group[1].destroy()  # the VM ends while its command runs
        with pytest.raises(aiores.FanOutError) as caught:
            await asyncio.wait_for(task, STEP)
        error = caught.value
        assert len(error.results) == 4
        killed, failed = error.results[1], error.results[2]
        assert killed.exit_status is None
        assert isinstance(killed.error, aiores.NoSuccess)  # ConnectionLost
        assert killed.resource is group[1]
        assert failed.exit_status == 3
        assert failed.error is None
        assert [r.stdout for r in (error.results[0], error.results[3])] == ["fast\n"] * 2
        assert len(error.exceptions) == 2
        assert error.exceptions[0] is killed.error
        assert group[2].id in str(error.exceptions[1])
        assert "status 3" in str(error.exceptions[1])
        assert "2 of 4 hosts" in str(error)
        await until_gone(mark)


@pytest.mark.asyncio
async def test_per_host_timeout_stops_that_host(session: aiores.Session, mark: str) -> None:
    async with machines(session, 3) as group:
        await group[0].run("touch slow")
        start = time.monotonic()
        result = await group.run(slow_unless_marked(mark), timeout=1.0, check=False)
        assert time.monotonic() - start < 10
        timed_out = result[0]
        assert isinstance(timed_out.error, aiores.Timeout)
        assert timed_out.exit_status is None
        assert timed_out.elapsed >= 1.0
        assert [r.stdout for r in result[1:]] == ["fast\n"] * 2
        assert result.failed == [timed_out]
        await until_gone(mark, timeout=5)


@pytest.mark.asyncio
async def test_deadline_stops_what_is_not_done(session: aiores.Session, mark: str) -> None:
    async with machines(session, 3) as group:
        for vm in group[1:]:
            await vm.run("touch slow")
        start = time.monotonic()
        # One host at a time: the first is quick, the second outlives the deadline,
        # the third never gets its turn.
        result = await group.run(slow_unless_marked(mark), limit=1, deadline=2.0, check=False)
        assert time.monotonic() - start < 10
        assert result[0].ok
        for late in result[1:]:
            assert isinstance(late.error, aiores.Timeout)
            assert "deadline of 2.0 s" in str(late.error)
            assert late.exit_status is None
        assert "was not done" in str(result[1].error)
        assert result[1].started is not None
        assert result[1].elapsed >= 1.0
        assert "had not started" in str(result[2].error)
        assert result[2].started is None
        await until_gone(mark, timeout=5)


@pytest.mark.asyncio
async def test_limit_bounds_hosts_at_once(session: aiores.Session) -> None:
    async with machines(session, 5) as group:
        result = await group.run("sleep 0.2", limit=2)
        spans = sorted((r.started, r.finished) for r in result)
        assert all(s is not None and f is not None for s, f in spans)
        most = max(
            sum(1 for s, f in spans if s is not None and f is not None and s <= at < f)
            for at, _ in spans
            if at is not None
        )
        assert most <= 2
        with pytest.raises(aiores.BadParameter):
            await group.run("true", limit=0)
        with pytest.raises(aiores.BadParameter):
            await group.run("true", deadline=-1)
        with pytest.raises(aiores.BadParameter):
            await group.run("")


@pytest.mark.asyncio
async def test_cancelling_a_fan_out_stops_every_command(session: aiores.Session, mark: str) -> None:
    async with machines(session, 4) as group:
        task = asyncio.create_task(group.run(f"exec sleep 30.{mark}"))
        await until_running(mark, 4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, STEP)
        await until_gone(mark, timeout=5)
        # The group still works afterwards.
        assert (await group.run("echo again")).ok


@pytest.mark.asyncio
async def test_stream_yields_each_host_as_it_completes(session: aiores.Session, mark: str) -> None:
    async with machines(session, 3) as group:
        for vm in group[1:]:
            await vm.run("touch slow")
        async with contextlib.aclosing(group.run_stream(slow_unless_marked(mark))) as results:
            first = await anext(results)
            assert first.resource is group[0]
            assert first.stdout == "fast\n"
            await until_running(mark, 2)
        # Closing the stream early stopped the commands still running.
        await until_gone(mark, timeout=5)

        await group[2].run("rm slow; touch fail")
        seen = [r async for r in group.run_stream("[ -e fail ] && exit 3; echo ok", limit=2)]
        assert {r.resource for r in seen} == set(group)
        assert sorted(r.exit_status or 0 for r in seen) == [0, 0, 3]
        with pytest.raises(aiores.BadParameter):
            group.run_stream("true", timeout=-1)
