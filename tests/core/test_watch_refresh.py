"""Every watcher answer refreshes a resource's state detail and extras, state moved or not."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.testing import FakeClock, FakePlugin

DESC = ComputeDescription(image="fake-linux")


async def tick(clock: FakeClock) -> float:
    """Let the watcher reach its sleep, then end that sleep (returns its length)."""
    await clock.wait_for_sleepers()
    return clock.advance_to_next()


def report(fake: FakePlugin, rid: str, state: ResourceState, detail: str, **extra: Any) -> None:
    """What the backend says of ``rid`` from its next describe on."""
    info = fake.cloud.resources[rid]
    fake.cloud.resources[rid] = dataclasses.replace(
        info, state=state, state_detail=detail, extra=extra
    )


@pytest.mark.asyncio
async def test_detail_and_extra_change_between_ticks_while_the_state_stays(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    waiter = asyncio.ensure_future(vm.wait())  # any final state: the watcher polls on
    report(fake, vm.native_id, ResourceState.ACTIVE, "running")
    await tick(clock)
    await clock.wait_for_sleepers()
    assert (vm.state, vm.state_detail, dict(vm.extra)) == (ResourceState.ACTIVE, "running", {})
    seen = []
    for left in (5.0, 4.0, 3.0):
        report(fake, vm.native_id, ResourceState.ACTIVE, "preempting", preempt_in=left)
        await tick(clock)
        await clock.wait_for_sleepers()  # the describe of that tick was applied
        seen.append((vm.state, vm.state_detail, vm.extra.get("preempt_in")))
    assert seen == [(ResourceState.ACTIVE, "preempting", left) for left in (5.0, 4.0, 3.0)]
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


@pytest.mark.asyncio
async def test_a_new_detail_brings_the_interval_back_to_the_floor(
    session: aiores.Session, fake: FakePlugin, clock: FakeClock
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    assert [await tick(clock) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    # Extras alone (a countdown, a counter) are no news: the interval stays long.
    report(fake, vm.native_id, ResourceState.PENDING, "pending", queued_for=40)
    assert [await tick(clock) for _ in range(2)] == [8.0, 8.0]
    assert vm.extra["queued_for"] == 40
    # A new detail with the same state is: what comes next may come soon.
    report(fake, vm.native_id, ResourceState.PENDING, "placing", queued_for=48)
    assert [await tick(clock) for _ in range(3)] == [1.0, 1.0, 2.0]
    assert (vm.state, vm.state_detail) == (ResourceState.PENDING, "placing")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
