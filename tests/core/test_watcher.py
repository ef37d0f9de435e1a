"""The shared watcher: one describe per tick for all waiters, adaptive interval, no polling."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState, _watch
from aiores._watch import Tracked
from aiores.testing import POLL_POLICY as POLICY
from aiores.testing import FakeClock, FakePlugin

from ..loop_turns import iteration_counter

DESC = ComputeDescription(image="fake-linux", tags={"web"})


async def tick(clock: FakeClock) -> float:
    """Let the watcher reach its sleep, then end that sleep."""
    await clock.wait_for_sleepers()
    return clock.advance_to_next()


@pytest.mark.asyncio
async def test_many_waiters_cost_one_describe_per_tick(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    mgr = session.manager("fake://")
    vms = await mgr.acquire_many(DESC, 120)  # more than one batch of 50
    waits = [asyncio.ensure_future(vm.wait(ResourceState.ACTIVE)) for vm in vms]
    for _ in range(3):  # three ticks with no change
        await tick(clock)
    await clock.wait_for_sleepers()
    # 120 ids in batches of 50: three describe calls per tick, never one per object.
    assert fake.cloud.describe_calls == [50, 50, 20] * 4
    for vm in vms:
        fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    await tick(clock)
    states = await asyncio.gather(*waits)
    assert states == [ResourceState.ACTIVE] * 120
    assert fake.cloud.describe_calls == [50, 50, 20] * 5
    assert all(vm.state_detail == "running" for vm in vms)


@pytest.mark.asyncio
async def test_interval_backs_off_while_nothing_changes_and_resets_on_change(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    waiter = asyncio.ensure_future(vm.wait(ResourceState.DONE))
    # Each step is the sleep after a describe: the first describe is immediate,
    # then the floor of 1 doubles up to the ceiling of 8 while nothing changes.
    steps = [await tick(clock) for _ in range(6)]
    assert steps == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE)  # the next describe sees it
    assert [await tick(clock) for _ in range(3)] == [1.0, 1.0, 2.0]
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.asyncio
async def test_jitter_spreads_ticks_within_bounds(fake: FakePlugin, clock: FakeClock) -> None:
    adaptor_policy = POLICY
    async with aiores.Session(journal=None, clock=clock) as session:
        mgr = session.manager("fake://")
        vm = await mgr.acquire(DESC)
        endpoint = next(iter(session._endpoints.values()))
        endpoint.watcher._policy = type(adaptor_policy)(
            floor=1.0, ceiling=1.0, backoff=1.0, jitter=0.2, batch=50
        )
        waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
        steps = [await tick(clock) for _ in range(20)]
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert all(0.8 <= s <= 1.2 for s in steps[1:])
    assert len({round(s, 6) for s in steps[1:]}) > 1  # actually spread


@pytest.mark.asyncio
async def test_waiter_arriving_late_shares_ticks(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    mgr = session.manager("fake://")
    a, b = await mgr.acquire_many(DESC, 2)
    wa = asyncio.ensure_future(a.wait(ResourceState.ACTIVE))
    await tick(clock)
    await tick(clock)
    await clock.wait_for_sleepers()
    calls = len(fake.cloud.describe_calls)
    wb = asyncio.ensure_future(b.wait(ResourceState.ACTIVE))
    # A new waiter resets the delay to the floor but does not force a describe now.
    await tick(clock)
    await clock.wait_for_sleepers()
    assert len(fake.cloud.describe_calls) == calls + 1
    assert fake.cloud.describe_calls[-1] == 2  # both ids in the same call
    for f in (wa, wb):
        f.cancel()
    await asyncio.gather(wa, wb, return_exceptions=True)


@pytest.mark.asyncio
async def test_polling_stops_when_nobody_waits(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    await tick(clock)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    calls = len(fake.cloud.describe_calls)
    watcher = next(iter(session._endpoints.values())).watcher
    if clock.sleepers:
        clock.advance_to_next()  # the loop wakes, finds no interest, and ends
    await watcher.idle.wait()
    assert clock.sleepers == 0
    assert len(fake.cloud.describe_calls) == calls
    # Cancelling the wait changed nothing about the resource.
    assert vm.state is ResourceState.PENDING
    assert fake.cloud.alive() == [vm.native_id]


@pytest.mark.asyncio
async def test_push_adaptor_is_never_polled(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    js = session.job_service("fake://")
    job = await js.submit(JobDescription(executable="/bin/true"))
    waiter = asyncio.ensure_future(job.wait())
    await asyncio.sleep(0)
    fake.job_adaptors[0].finish(job.native_id or "", 0)
    assert await waiter is JobState.DONE
    assert fake.cloud.describe_calls == []
    assert clock.sleepers == 0
    assert job.exit_code == 0


@pytest.mark.asyncio
async def test_polled_jobs_are_fed_by_describe(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    js = session.job_service("fake://?mode=poll")
    jobs = [await js.submit(JobDescription(executable="/bin/true")) for _ in range(5)]
    waiters = asyncio.ensure_future(asyncio.gather(*(j.wait() for j in jobs)))
    await tick(clock)  # the first describe was immediate; this ends the sleep after it
    adaptor = fake.job_adaptors[0]
    for j in jobs:
        adaptor.finish(j.native_id or "", 3)
    assert await waiters == [JobState.FAILED] * 5  # seen by the second describe
    assert fake.cloud.describe_calls == [5, 5]
    assert {j.exit_code for j in jobs} == {3}


@pytest.mark.asyncio
async def test_describe_error_reaches_waiters(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    fake.cloud.describe_error = aiores.AuthenticationFailed("token expired")
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    # The first describe is immediate: no tick needed.
    with pytest.raises(aiores.AuthenticationFailed, match="token expired"):
        await waiter


@pytest.mark.asyncio
async def test_vanished_resource_raises_does_not_exist(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    del fake.cloud.resources[vm.native_id]
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    # Backends are eventually consistent: one absence is not enough, three are.
    for _ in range(2):
        await tick(clock)
    assert not waiter.done()
    with pytest.raises(aiores.DoesNotExist, match="no longer known"):
        await waiter
    assert fake.cloud.describe_calls == [1, 1, 1]


@pytest.mark.asyncio
async def test_transient_describe_errors_are_retried(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    fake.cloud.describe_error = aiores.ConnectionLost("connection reset")
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    for _ in range(3):
        await tick(clock)
    assert not waiter.done()  # three failures so far: still waiting
    fake.cloud.describe_error = None
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE)
    assert await waiter is ResourceState.ACTIVE  # the describe the last tick woke
    assert len(fake.cloud.describe_calls) == 4


@pytest.mark.asyncio
async def test_persistent_transient_errors_reach_waiters(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    fake.cloud.describe_error = aiores.ConnectionLost("connection reset")
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    for _ in range(4):
        await tick(clock)
    with pytest.raises(aiores.ConnectionLost):
        await waiter
    assert len(fake.cloud.describe_calls) == 5


@pytest.mark.asyncio
async def test_wait_for_state_that_cannot_come(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    fake.cloud.set_state(vm.native_id, ResourceState.FAILED, "boot failed")
    # The first describe is immediate: no tick needed.
    with pytest.raises(aiores.IncorrectState, match=r"FAILED \(boot failed\); ACTIVE can no"):
        await waiter
    # Already final: the same answer at once, without asking the backend.
    calls = len(fake.cloud.describe_calls)
    with pytest.raises(aiores.IncorrectState):
        await vm.wait(ResourceState.ACTIVE)
    assert await vm.wait() is ResourceState.FAILED
    assert len(fake.cloud.describe_calls) == calls


@pytest.mark.asyncio
async def test_wait_timeout(session: aiores.Session, fake: FakePlugin) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    with pytest.raises(aiores.Timeout, match=r"did not reach ACTIVE within 0\.05 s") as info:
        await vm.wait(ResourceState.ACTIVE, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert vm.state is ResourceState.PENDING


@pytest.mark.asyncio
async def test_illegal_transition_is_ignored(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE)
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    # The first describe is immediate: no tick needed.
    assert await waiter is ResourceState.ACTIVE
    # The backend now claims PENDING again: a state never goes backwards.
    fake.cloud.set_state(vm.native_id, ResourceState.PENDING, "pending again")
    calls = len(fake.cloud.describe_calls)
    waiter = asyncio.ensure_future(vm.wait(ResourceState.DONE))
    await tick(clock)
    await clock.wait_for_sleepers()  # the describe that saw PENDING has run
    assert len(fake.cloud.describe_calls) == calls + 1
    assert vm.state is ResourceState.ACTIVE
    assert vm.state_detail != "pending again"  # the illegal report was not taken at all
    assert session.journal is not None
    await session.journal.flush()
    assert await session.journal.transitions(vm.id) == [("PENDING", "ACTIVE")]
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


@pytest.mark.asyncio
async def test_one_describe_answer_is_taken_a_few_objects_per_loop_turn(
    session: aiores.Session,
    fake: FakePlugin,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each state taken wakes its waiters: the objects of one answer take their states
    ``TAKES_PER_TURN`` per loop iteration, not all in the same one."""
    monkeypatch.setattr(_watch, "TAKES_PER_TURN", 8)
    mgr = session.manager("fake://")
    vms = await mgr.acquire_many(DESC, 40)  # one describe of 40 (batches of 50)
    waits = [asyncio.ensure_future(vm.wait(ResourceState.ACTIVE)) for vm in vms]
    for _ in range(3):  # ticks with no change
        await tick(clock)
    await clock.wait_for_sleepers()
    for vm in vms:
        fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    now, stop = iteration_counter(asyncio.get_running_loop())
    taken: list[int] = []
    plain = Tracked._apply

    def counted(self: Any, info: Any) -> bool:
        taken.append(now())
        return plain(self, info)

    monkeypatch.setattr(Tracked, "_apply", counted)
    try:
        clock.advance_to_next()
        async with asyncio.timeout(10):
            states = await asyncio.gather(*waits)
    finally:
        stop()
    assert states == [ResourceState.ACTIVE] * 40
    assert len(taken) == 40
    per_iteration = Counter(taken)
    assert max(per_iteration.values()) <= 8
    assert len(per_iteration) == 5


@pytest.mark.asyncio
async def test_misses_and_states_of_an_answer_taken_in_turns(
    session: aiores.Session,
    fake: FakePlugin,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer of 40 objects taken 8 per iteration, every third one vanished: the
    vanished raise DoesNotExist after exactly three describes, each in its chunk,
    the others take their state, and nothing is left counting misses."""
    monkeypatch.setattr(_watch, "TAKES_PER_TURN", 8)
    mgr = session.manager("fake://")
    vms = await mgr.acquire_many(DESC, 40)
    vanished = {vm.native_id for vm in vms[::3]}
    for native_id in vanished:
        del fake.cloud.resources[native_id]
    for vm in vms:
        if vm.native_id not in vanished:
            fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    waits = {vm.native_id: asyncio.ensure_future(vm.wait(ResourceState.ACTIVE)) for vm in vms}
    await tick(clock)  # the second describe: two misses each
    await clock.wait_for_sleepers()  # it ended (the watcher sleeps again)
    assert [i for i, w in waits.items() if w.done()] == [
        vm.native_id for vm in vms if vm.native_id not in vanished
    ]
    assert fake.cloud.describe_calls == [40, 14]
    await tick(clock)  # the third: gone
    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(*waits.values(), return_exceptions=True)
    for native_id, outcome in zip(waits, outcomes, strict=True):
        if native_id in vanished:
            assert isinstance(outcome, aiores.DoesNotExist), outcome
        else:
            assert outcome is ResourceState.ACTIVE
    assert fake.cloud.describe_calls == [40, 14, 14]
    _, watcher = await mgr._open()
    assert watcher._missing == {}
