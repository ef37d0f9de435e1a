"""Pools on the fake backend, time on a fake clock: scaling, work, requeue, revocation."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores.testing import FakeClock, FakeCloud

from .conftest import STEP, Commands, PoolPlugin, boot, until

DESC = ComputeDescription(template="small")
T = TypeVar("T")


def _spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    return asyncio.ensure_future(coro)


def _notice(fake: PoolPlugin, rid: str, left: float) -> None:
    cloud = fake.cloud
    info = cloud.resources[rid]
    cloud.resources[rid] = dataclasses.replace(
        info, state_detail="preempting", extra={"preempt_in": left}
    )


def _pending(cloud: FakeCloud) -> bool:
    return any(r.state is ResourceState.PENDING for r in cloud.resources.values())


def _alive(fake: PoolPlugin) -> list[str]:
    return fake.cloud.alive()


@pytest.mark.asyncio
async def test_grows_in_batches_to_max_and_never_beyond(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, max=3, batch=2, tags="w") as pool:
        events = pool.events()
        runs = [_spawn(pool.run(f"task-{i}")) for i in range(10)]
        await until(clock, lambda: len(fake.cloud.resources) == 3)
        asked: list[int] = []
        while sum(asked) < 3:
            event = await anext(events)
            if event.kind == "acquire":
                asked.append(event.count)
        assert asked == [2, 1]  # a batch, then what max leaves
        assert pool.stats().queued == 10
        assert pool.stats().booting == 3
        assert all("w" in vm.tags for vm in pool.machines)

        boot(fake.cloud)
        await until(clock, lambda: len(commands.live()) == 3)
        for i in range(10):
            await until(clock, lambda i=i: bool(commands.live(f"task-{i}")))  # type: ignore[misc]
            assert pool.stats().size == 3
            assert len(commands.live()) <= 3
            commands.end(f"task-{i}")
        results = await asyncio.gather(*runs)
        assert [r.exit_status for r in results] == [0] * 10
        assert {r.stdout for r in results} == {vm.native_id for vm in pool.machines}
        stats = pool.stats()
        assert (stats.done, stats.queued, stats.running, stats.size) == (10, 0, 0, 3)
        assert len(fake.cloud.resources) == 3
        await events.aclose()
    assert _alive(fake) == []


@pytest.mark.asyncio
async def test_keeps_min_and_shrinks_to_it_after_idle_timeout(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, min=1, max=3, idle_timeout=10) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 1)
        assert pool.stats().size == 1  # min, with no work
        boot(fake.cloud)
        runs = [_spawn(pool.run(f"x{i}")) for i in range(3)]
        await until(clock, lambda: len(fake.cloud.resources) == 3)
        boot(fake.cloud)
        await until(clock, lambda: len(commands.live()) == 3)
        for i in range(3):
            commands.end(f"x{i}")
        await asyncio.wait_for(asyncio.gather(*runs), STEP)
        idle_from = clock.now()
        await until(clock, lambda: pool.stats().idle == 3)
        # Not before idle_timeout ...
        await until(clock, lambda: clock.now() >= idle_from + 8)
        assert pool.stats().size == 3
        # ... then down to min, never below.
        await until(clock, lambda: pool.stats().size == 1)
        await until(clock, lambda: len(_alive(fake)) == 1)
        clock.advance(100)
        await until(clock, lambda: clock.now() > idle_from + 200)
        assert pool.stats().size == 1
        assert len(_alive(fake)) == 1
        assert pool.stats().machine_seconds > 0
    assert _alive(fake) == []


@pytest.mark.asyncio
async def test_work_on_a_machine_that_fails_runs_again_elsewhere_once(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, min=2, max=2) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        await until(clock, lambda: pool.stats().idle == 2)
        first = _spawn(pool.run("job-a"))
        await until(clock, lambda: len(commands.live()) >= 1)
        (call,) = commands.live("job-a")
        # The machine dies under it: the attempt is stopped, requeued, runs on the other.
        fake.cloud.set_state(call.host, ResourceState.FAILED)
        await until(clock, lambda: call.cancelled and len(commands.live("job-a")) == 1)
        (again,) = commands.live("job-a")
        assert again.host != call.host
        commands.end("job-a")
        result = await asyncio.wait_for(first, STEP)
        assert result.stdout == again.host
        assert result.resource is not None
        assert commands.most["job-a"] == 1  # never twice at once
        stats = pool.stats()
        assert (stats.requeued, stats.done, stats.failed) == (1, 1, 0)
        # The lost machine is replaced (min=2).
        await until(clock, lambda: pool.stats().size == 2 and pool.stats().booting == 1)


@pytest.mark.asyncio
async def test_a_broken_connection_releases_the_machine_before_the_work_runs_again(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, min=2, max=2) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        await until(clock, lambda: pool.stats().idle == 2)
        bad, good = pool.machines
        commands.failures[bad.native_id] = aiores.ConnectionLost("reset by peer")
        commands.auto = 0
        results = await asyncio.wait_for(asyncio.gather(pool.run("a"), pool.run("b")), STEP)
        assert {r.stdout for r in results} == {good.native_id}
        assert bad.state is ResourceState.CANCELED  # released, before "a" ran again
        assert [bad.native_id] in fake.cloud.destroy_calls
        assert pool.stats().requeued == 1


@pytest.mark.asyncio
async def test_retries_are_bounded(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, max=1, retries=2) as pool:
        run = _spawn(pool.run("doomed"))
        cloud = fake.cloud
        for _ in range(3):
            await until(clock, lambda: _pending(cloud))
            boot(cloud)
            await until(clock, lambda: len(commands.live("doomed")) == 1)
            cloud.set_state(commands.live("doomed")[0].host, ResourceState.FAILED)
        await until(clock, run.done)
        with pytest.raises(aiores.NoSuccess, match=r"failed on 3 machines \(retries=2\)"):
            await run
        assert pool.stats().failed == 1
        assert pool.stats().requeued == 2


@pytest.mark.asyncio
async def test_results_and_own_errors_are_not_retried(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, min=1, max=1) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 1)
        boot(fake.cloud)
        run = _spawn(pool.run("false"))
        await until(clock, lambda: len(commands.live()) >= 1)
        commands.end("false", exit_status=3)
        assert (await asyncio.wait_for(run, STEP)).exit_status == 3
        with pytest.raises(aiores.BadParameter):
            await pool.run("")
        timed = _spawn(pool.run("slow"))
        await until(clock, lambda: len(commands.live()) >= 1)
        commands.live("slow")[0].ended.set_exception(aiores.Timeout("slow took too long"))
        with pytest.raises(aiores.Timeout):
            await asyncio.wait_for(timed, STEP)
        assert pool.stats().requeued == 0
        assert len(pool.machines) == 1


@pytest.mark.asyncio
async def test_revocation_drains_lets_work_finish_and_releases_early(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    drained: list[tuple[str, float]] = []

    async def drain(vm: aiores.Compute, left: float) -> None:
        drained.append((vm.native_id, left))

    async with session.pool("fake://", DESC, min=2, max=2, drain=drain) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        await until(clock, lambda: pool.stats().idle == 2)
        first = _spawn(pool.run("long"))
        await until(clock, lambda: len(commands.live()) >= 1)
        host = commands.live("long")[0].host
        _notice(fake, host, 60.0)
        await until(clock, lambda: pool.stats().draining == 1 and bool(drained))
        assert drained == [(host, 60.0)]
        # No new work goes there while it drains.
        second = _spawn(pool.run("other"))
        await until(clock, lambda: len(commands.live()) >= 2)
        assert commands.live("other")[0].host != host
        commands.end("other")
        await asyncio.wait_for(second, STEP)
        # Its running work fits the deadline: it finishes there, then the machine goes.
        commands.end("long")
        assert (await asyncio.wait_for(first, STEP)).stdout == host
        await until(clock, lambda: host not in _alive(fake))
        assert pool.stats().revoked == 1
        assert pool.stats().requeued == 0
        # ... and it is replaced.
        await until(clock, lambda: len(_alive(fake)) == 2)


@pytest.mark.asyncio
async def test_revocation_with_no_time_left_requeues_running_work(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, min=2, max=2) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        await until(clock, lambda: pool.stats().idle == 2)
        run = _spawn(pool.run("work"))
        await until(clock, lambda: len(commands.live()) >= 1)
        call = commands.live("work")[0]
        _notice(fake, call.host, 0.0)
        await until(clock, lambda: call.cancelled and len(commands.live("work")) == 1)
        other = commands.live("work")[0]
        assert other.host != call.host
        commands.end("work")
        assert (await asyncio.wait_for(run, STEP)).stdout == other.host
        assert commands.most["work"] == 1
        await until(clock, lambda: call.host not in _alive(fake))


@pytest.mark.asyncio
async def test_revocation_deadline_stops_work_that_does_not_fit(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, min=2, max=2, margin=2) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        await until(clock, lambda: pool.stats().idle == 2)
        run = _spawn(pool.run("work"))
        await until(clock, lambda: len(commands.live()) >= 1)
        call = commands.live("work")[0]
        _notice(fake, call.host, 10.0)
        await until(clock, lambda: pool.stats().draining == 1)
        noticed = clock.now()
        commands.auto = 0  # the next attempt ends at once
        await until(clock, lambda: call.cancelled)
        assert clock.now() >= noticed + 8 - 1  # margin 2 s before the 10 s deadline
        await until(clock, run.done)
        assert (await run).stdout != call.host


@pytest.mark.asyncio
async def test_boot_failures_are_replaced_and_bounded(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, max=1, boot_retries=3) as pool:
        run = _spawn(pool.run("x"))
        await until(clock, lambda: len(fake.cloud.resources) == 1)
        boot(fake.cloud, ResourceState.FAILED)
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        await until(clock, lambda: len(commands.live()) >= 1)
        commands.end("x")
        await asyncio.wait_for(run, STEP)
        assert pool.stats().boot_failures == 1
        # Only failures: the waiting work fails after boot_retries in a row.
        for vm in pool.machines:
            fake.cloud.set_state(vm.native_id, ResourceState.FAILED)
        await until(clock, lambda: pool.stats().size == 0)
        run = _spawn(pool.run("y"))
        while not run.done():
            await until(clock, lambda: run.done() or bool(boot(fake.cloud, ResourceState.FAILED)))
        with pytest.raises(aiores.NoSuccess, match="3 machines in a row did not boot"):
            await run


@pytest.mark.asyncio
async def test_cancelling_run_while_queued_and_while_running(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, max=1) as pool:
        queued = _spawn(pool.run("never"))
        await until(clock, lambda: pool.stats().queued == 1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.stats().queued == 0
        run = _spawn(pool.run("stopped"))
        await until(clock, lambda: len(fake.cloud.resources) == 1)
        boot(fake.cloud)
        await until(clock, lambda: len(commands.live()) >= 1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert commands.calls[-1].cancelled
        assert not commands.live()
        assert [c.command for c in commands.calls] == ["stopped"]
        stats = pool.stats()
        assert (stats.running, stats.queued, stats.idle) == (0, 0, 1)


@pytest.mark.asyncio
async def test_leaving_the_block_stops_work_and_releases_every_machine(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    pool = session.pool("fake://", DESC, min=2, max=4)
    async with pool:
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        running = [_spawn(pool.run(f"r{i}")) for i in range(3)]
        await until(clock, lambda: len(commands.live()) >= 2)
        await until(clock, lambda: pool.stats().booting == 1)  # the third is coming
    outcomes = await asyncio.gather(*running, return_exceptions=True)
    assert all(isinstance(o, aiores.IncorrectState) for o in outcomes), outcomes
    assert all(c.cancelled for c in commands.calls)
    assert _alive(fake) == []
    assert len(fake.cloud.resources) == 3
    with pytest.raises(aiores.IncorrectState, match="closed"):
        await pool.run("late")
    await pool.aclose()  # again: nothing


@pytest.mark.asyncio
async def test_cancelling_the_block_mid_acquire_leaves_no_machine(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock
) -> None:
    paused = fake.cloud.pause_at("acquire:after")

    async def body() -> None:
        async with session.pool("fake://", DESC, min=3, max=3):
            await asyncio.Event().wait()

    task = _spawn(body())
    await asyncio.wait_for(paused.wait(), STEP)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(fake.cloud.resources) == 3
    assert _alive(fake) == []


@pytest.mark.asyncio
async def test_map_streams_results_and_closing_it_stops_the_rest(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, max=2) as pool:
        results = pool.map([f"m{i}" for i in range(5)])
        got: list[int] = []

        async def consume() -> None:
            async for index, result in results:
                assert result.exit_status == 0
                got.append(index)
                if len(got) == 3:
                    break
            await results.aclose()

        consumer = _spawn(consume())
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        for i in (1, 0, 2):
            await until(clock, lambda i=i: bool(commands.live(f"m{i}")))  # type: ignore[misc]
            commands.end(f"m{i}")
        await asyncio.wait_for(consumer, STEP)
        assert got == [1, 0, 2]
        assert not commands.live()
        assert all(c.cancelled for c in commands.calls[3:])
        assert pool.stats().queued == 0
        assert pool.stats().running == 0
        with pytest.raises(aiores.BadParameter):
            pool.map(["ok", ""])


@pytest.mark.asyncio
async def test_submit_returns_the_ended_job(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock
) -> None:
    async with session.pool("fake://", DESC, min=1, max=1) as pool:
        await until(clock, lambda: len(fake.cloud.resources) == 1)
        boot(fake.cloud)
        submitted = _spawn(pool.submit(JobDescription(executable="/bin/true")))
        jobs = fake.machines.jobs
        await until(clock, lambda: bool(jobs) and bool(fake.cloud.jobs))
        assert pool.stats().busy == 1
        (jid,) = fake.cloud.jobs
        jobs[0].finish(jid, exit_code=0)
        job = await asyncio.wait_for(submitted, STEP)
        assert job.state is JobState.DONE
        assert job.native_id == jid
        assert pool.stats().idle == 1


class Outside:
    """A policy driven by outside state (a scheduler's pending count)."""

    def __init__(self) -> None:
        self.pending = 0

    def should_add(self, view: aiores.PoolView) -> int:
        return max(0, self.pending - view.size)

    def should_remove(self, view: aiores.PoolView) -> Sequence[aiores.Compute]:
        surplus = view.size - self.pending
        return [m.resource for m in view.idle[: max(0, surplus)]]


@pytest.mark.asyncio
async def test_a_custom_policy_driven_by_outside_state_within_min_and_max(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock
) -> None:
    policy = Outside()
    assert isinstance(policy, aiores.Policy)
    async with session.pool("fake://", DESC, min=1, max=4, policy=policy) as pool:
        await until(clock, lambda: pool.stats().size == 1)
        policy.pending = 3
        await until(clock, lambda: pool.stats().size == 3)
        policy.pending = 9
        await until(clock, lambda: len(fake.cloud.resources) == 4)
        assert pool.stats().size == 4  # max
        boot(fake.cloud)
        await until(clock, lambda: pool.stats().idle == 4)
        policy.pending = 0
        await until(clock, lambda: pool.stats().size == 1)  # min
        await until(clock, lambda: len(_alive(fake)) == 1)


@pytest.mark.asyncio
async def test_idle_machines_the_provider_values_most_go_first(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock
) -> None:
    async with session.pool("fake://", DESC, min=1, max=3, idle_timeout=5) as pool:
        runs = [_spawn(pool.run("v")) for _ in range(3)]
        await until(clock, lambda: len(fake.cloud.resources) == 3)
        for run in runs:
            run.cancel()
        wanted = pool.machines[1].native_id
        for rid in list(fake.cloud.resources):
            info = fake.cloud.resources[rid]
            value = {"value": 9.0} if rid == wanted else {"value": 1.0}
            fake.cloud.resources[rid] = dataclasses.replace(
                info, state=ResourceState.ACTIVE, extra=value
            )
        await until(clock, lambda: len(fake.cloud.destroy_calls) == 2)
        assert fake.cloud.destroy_calls[0] == [wanted]
        assert pool.stats().size == 1


@pytest.mark.asyncio
async def test_arguments_are_checked(session: aiores.Session, fake: PoolPlugin) -> None:
    with pytest.raises(aiores.BadParameter, match="max"):
        session.pool("fake://", DESC, min=3, max=2)
    with pytest.raises(aiores.BadParameter, match="description"):
        session.pool("fake://", "small", max=2)  # type: ignore[arg-type]
    with pytest.raises(aiores.BadParameter, match="policy"):
        session.pool("fake://", DESC, policy=object())  # type: ignore[arg-type]
    with pytest.raises(aiores.BadParameter, match="slots"):
        session.pool("fake://", DESC, slots=0)
    with pytest.raises(aiores.BadParameter, match="idle_timeout"):
        aiores.QueuePolicy(idle_timeout=-1)
    with pytest.raises(aiores.IncorrectURL):
        session.pool("nope://", DESC)
