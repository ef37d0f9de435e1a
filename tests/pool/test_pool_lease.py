"""Pools and leases, pools and revocation countdowns (delete-pending, max_wait_time).

On the fake backend with a fake clock: which leases the pool renews and when, how
it follows a countdown whose deadline moves. On the simulated cloud: the same
against real machines, real commands and the cloud's own clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.testing import FakeClock, FakePlugin

from .conftest import STEP, Commands, PoolPlugin, boot, until, working

T = TypeVar("T")
LEASE = 30.0
LEASED = ComputeDescription(template="small", duration=LEASE)
DESC = ComputeDescription(template="small")
#: A sim cloud whose VMs boot at once.
FAST = "sim://?boot_delay=0.01-0.05"


def _spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    return asyncio.ensure_future(coro)


def _renewed(fake: PoolPlugin, host: str) -> int:
    return sum(1 for rid, _ in fake.renewals if rid == host)


def _delete_pending(fake: PoolPlugin, rid: str, left: float) -> None:
    """The provider's notice: ``rid`` goes in ``left`` seconds (CloudLab's words)."""
    info = fake.cloud.resources[rid]
    fake.cloud.resources[rid] = dataclasses.replace(
        info, state_detail="delete-pending", extra={"max_wait_time": left}
    )


@pytest.mark.asyncio
async def test_leases_are_renewed_while_needed_and_left_to_expire_when_not(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", LEASED, min=1, max=2, idle_timeout=1000) as pool:
        events = pool.events()
        first = _spawn(pool.run("a"))
        second = _spawn(pool.run("b"))
        await until(clock, lambda: len(fake.cloud.resources) == 2)
        boot(fake.cloud)
        await until(clock, lambda: len(commands.live()) >= 2)
        busy = commands.live("a")[0].host
        spare = commands.end("b").host
        assert (await asyncio.wait_for(second, STEP)).stdout == spare
        # One machine runs work; the other is idle beyond min: only the first is
        # renewed, by the lease again, once less than a third of it is left.
        await until(clock, lambda: _renewed(fake, busy) == 1)
        assert LEASE * 2 / 3 <= clock.now() < LEASE
        assert fake.renewals == [(busy, LEASE)]
        # The backend ends the other at its lease's end; the pool released nothing.
        await until(clock, lambda: clock.now() >= LEASE)
        assert _renewed(fake, spare) == 0
        fake.cloud.set_state(spare, ResourceState.EXPIRED, "lease ended")
        await until(clock, lambda: [vm.native_id for vm in pool.machines] == [busy])
        assert all(spare not in call for call in fake.cloud.destroy_calls)
        # The busy one's lease runs on, renewed each time (never ended by the test).
        await until(clock, lambda: _renewed(fake, busy) == 3)
        commands.end("a")
        assert (await asyncio.wait_for(first, STEP)).stdout == busy
        # Idle now, but the one machine min keeps: still renewed.
        await until(clock, lambda: _renewed(fake, busy) == 4)
        assert pool.stats().renewed == 4
        kinds: list[tuple[str, str | None]] = []
        while len([k for k in kinds if k[0] == "renewed"]) < 4:
            event = await asyncio.wait_for(anext(events), STEP)
            kinds.append((event.kind, event.resource.native_id if event.resource else None))
        assert ("lost", spare) in kinds
        assert {k for k in kinds if k[0] == "renewed"} == {("renewed", busy)}
        await events.aclose()


@pytest.mark.asyncio
async def test_a_pool_without_leases_renews_nothing(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    async with session.pool("fake://", DESC, min=1, max=1) as pool:
        run, _ = await working(pool, fake, clock, "w")
        await until(clock, lambda: clock.now() >= 3 * LEASE)
        commands.end("w")
        await asyncio.wait_for(run, STEP)
        assert fake.renewals == []
        assert pool.stats().renewed == 0


@pytest.mark.asyncio
async def test_a_countdown_whose_deadline_moves_drains_requeues_and_releases_early(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    drained: list[tuple[str, float]] = []

    async def drain(vm: aiores.Compute, left: float) -> None:
        drained.append((vm.native_id, left))

    async with session.pool("fake://", DESC, min=2, max=2, drain=drain, margin=1) as pool:
        run, call = await working(pool, fake, clock, "work")
        noticed = clock.now()
        _delete_pending(fake, call.host, 10.0)
        await until(clock, lambda: bool(drained))
        assert drained == [(call.host, 10.0)]
        assert pool.stats().draining == 1
        # Notices come again, each with less time left: one that moves the deadline
        # closer (2 s where 6 were due) is heeded; work stops 1 s (margin) before it.
        await until(clock, lambda: clock.now() >= noticed + 4)
        _delete_pending(fake, call.host, 6.0)
        await until(clock, lambda: clock.now() >= noticed + 5)
        assert not call.cancelled
        commands.auto = 0  # the next attempt ends at once
        _delete_pending(fake, call.host, 2.0)
        await until(clock, lambda: call.cancelled, step=0.25)
        assert clock.now() < noticed + 9  # not the first deadline's cut
        result = await asyncio.wait_for(run, STEP)
        assert result.stdout != call.host
        # Released once drained: before the provider takes it.
        await until(clock, lambda: any(call.host in c for c in fake.cloud.destroy_calls), step=0.25)
        assert clock.now() < noticed + 9
        # Requeued once, finished once, never twice at once; the hook ran once.
        assert [c.host for c in commands.calls if c.command == "work"] == [
            call.host,
            result.stdout,
        ]
        assert commands.most["work"] == 1
        stats = pool.stats()
        assert (stats.done, stats.requeued, stats.revoked) == (1, 1, 1)
        assert len(drained) == 1


@pytest.mark.asyncio
async def test_a_countdown_at_zero_means_gone(
    session: aiores.Session, fake: PoolPlugin, clock: FakeClock, commands: Commands
) -> None:
    drained: list[tuple[str, float]] = []

    async def drain(vm: aiores.Compute, left: float) -> None:
        drained.append((vm.native_id, left))
        await asyncio.sleep(STEP)  # cut at once: no time is left

    async with session.pool("fake://", DESC, min=2, max=2, drain=drain) as pool:
        run, call = await working(pool, fake, clock, "work")
        _delete_pending(fake, call.host, 0.0)
        await until(clock, lambda: call.cancelled and len(commands.live("work")) == 1)
        assert drained == [(call.host, 0.0)]
        other = commands.end("work")
        assert other.host != call.host
        assert (await asyncio.wait_for(run, STEP)).stdout == other.host
        assert commands.most["work"] == 1
        await until(clock, lambda: any(call.host in c for c in fake.cloud.destroy_calls))
        assert pool.stats().requeued == 1


# -- on the simulated cloud ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_sim_a_lease_outlived_by_work_is_renewed_then_runs_out_when_idle(
    sim_session: aiores.Session,
) -> None:
    tag = "pool-" + secrets.token_hex(4)
    desc = ComputeDescription(template="tiny", duration=2.1)
    async with sim_session.pool(
        FAST, desc, min=0, max=1, tags=tag, idle_timeout=60, tick=0.1
    ) as pool:
        events = pool.events()
        # Longer than its first lease: it would have expired under the command.
        result = await asyncio.wait_for(pool.run("sleep 3; echo done"), STEP)
        assert result.ok, result
        assert result.stdout.strip() == "done"
        vm = result.resource
        assert isinstance(vm, aiores.Compute)
        assert pool.stats().renewed >= 1
        assert pool.stats().requeued == 0
        # Idle and beyond min: no longer renewed, it runs out at the cloud.
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED
        assert vm.state_detail.startswith("expired")
        async with asyncio.timeout(STEP):
            async for event in events:
                if event.kind == "lost":
                    assert event.resource is vm
                    break
                assert event.kind != "release"
        assert pool.stats().size == 0
        await events.aclose()


@pytest.mark.asyncio
async def test_sim_revocation_drains_requeues_once_and_releases_before_the_deadline(
    sim_session: aiores.Session, tmp_path: Path
) -> None:
    tag = "pool-" + secrets.token_hex(4)
    started = tmp_path / "started"
    # The first attempt outlives its machine's notice; the one after finds it started.
    command = f"if [ -e {started} ]; then echo again; exit 0; fi; touch {started}; sleep 30"
    desc = ComputeDescription(template="tiny", user_data="#sim: revoke=1.5 revoke_wait=2")
    drained: list[tuple[aiores.Compute, float]] = []

    async def drain(vm: aiores.Compute, left: float) -> None:
        drained.append((vm, left))

    async with sim_session.pool(
        FAST, desc, min=1, max=2, tags=tag, margin=1, tick=0.1, drain=drain
    ) as pool:
        events = pool.events()
        result = await asyncio.wait_for(pool.run(command), STEP)
        assert result.stdout.strip() == "again"
        [(first, left)] = drained[:1]
        assert 0 < left <= 2
        assert result.resource is not first
        kinds = []
        async with asyncio.timeout(STEP):
            async for event in events:
                kinds.append((event.kind, event.resource, event.detail))
                if {"release", "requeue"} <= {k for k, vm, _ in kinds if vm is first}:
                    break
        assert ("release", first, "drained") in kinds
        assert [k[1] for k in kinds if k[0] == "requeue"] == [first]
        # Released by the pool (CANCELED) before the cloud took it (EXPIRED).
        assert await first.wait(timeout=STEP) is ResourceState.CANCELED
        stats = pool.stats()
        assert (stats.done, stats.requeued) == (1, 1)
        await events.aclose()


@pytest.mark.asyncio
async def test_renew_on_a_backend_without_leases_says_so() -> None:
    plain = FakePlugin()  # no renew: the contract's default
    aiores.register_adaptor(plain)
    try:
        async with aiores.Session(journal=None, clock=FakeClock()) as session:
            vm = await session.manager("fake://").acquire(DESC)
            assert vm.expires_at is None
            with pytest.raises(aiores.NotSupported, match=r"fake:// does not support renewing"):
                await vm.renew(60)
            for bad in (0, -5, float("nan"), float("inf"), True, "60"):
                with pytest.raises(aiores.BadParameter, match="seconds"):
                    await vm.renew(bad)  # type: ignore[arg-type]
    finally:
        aiores.unregister_adaptor(plain.name)
