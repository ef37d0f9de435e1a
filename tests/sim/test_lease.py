"""sim:// leases (renew, EXPIRED at the end), revocations (delete-pending countdowns)
and provider values."""

from __future__ import annotations

import math
import time

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_sim import SimResourceAdaptor

from .conftest import STEP, listening, port_of
from .test_cloud import Events

D = ComputeDescription(ready=None)  # ACTIVE = "the cloud says running" (no SSH probe)
FAST = "sim://?boot_delay=0.05"


@pytest.mark.asyncio
async def test_a_renewed_lease_ends_at_its_new_end_not_before() -> None:
    async with aiores.Session() as session:
        vm = await session.manager(FAST).acquire(D.replace(duration=0.5))
        assert vm.expires_at is not None
        assert vm.expires_at == pytest.approx(time.time() + 0.5, abs=0.5)
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        first = vm.expires_at
        renewed = time.monotonic()
        await vm.renew(1.2)
        assert vm.expires_at is not None
        assert vm.expires_at == pytest.approx(time.time() + 1.2, abs=0.5)
        assert vm.expires_at > first
        # Journalled: recover and later programs know the new end.
        assert session.journal is not None
        await session.journal.flush()
        [row, *_] = await session.journal.records("resource", [vm.native_id])
        assert row["data"]["expires_at"] == vm.expires_at
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED
        # Not at the first end (0.5 s from the acquire): 1.2 s from the renewal.
        assert time.monotonic() - renewed >= 1.1
        assert vm.state_detail.startswith("expired")
        assert "lease" in vm.state_detail
        assert not listening(port_of(vm))


@pytest.mark.asyncio
async def test_renew_can_shorten_a_lease() -> None:
    async with aiores.Session() as session:
        vm = await session.manager(FAST).acquire(D.replace(duration=600))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        started = time.monotonic()
        await vm.renew(0.3)
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED
        assert time.monotonic() - started < 10


@pytest.mark.asyncio
async def test_renew_is_refused_without_a_lease_after_the_end_and_for_bad_seconds() -> None:
    async with aiores.Session() as session:
        mgr = session.manager(FAST)
        plain = await mgr.acquire(D)
        assert plain.expires_at is None
        with pytest.raises(aiores.IncorrectState, match="no lease"):
            await plain.renew(10)
        for bad in (0, -1, math.nan, math.inf, True, "10", None):
            with pytest.raises(aiores.BadParameter, match="seconds"):
                await plain.renew(bad)  # type: ignore[arg-type]
        await plain.destroy()
        with pytest.raises(aiores.IncorrectState, match="CANCELED"):
            await plain.renew(10)
        # The cloud refuses too when the client did not know it had ended.
        leased = await mgr.acquire(D.replace(duration=600))
        adaptor = await session.resource_adaptor(FAST)
        await adaptor.destroy([leased.native_id])
        with pytest.raises(aiores.IncorrectState, match="CANCELED"):
            await adaptor.renew(leased.native_id, 10)
        with pytest.raises(aiores.DoesNotExist):
            await adaptor.renew("vm-0000000000", 10)


@pytest.mark.asyncio
async def test_revocation_counts_down_then_takes_the_vm() -> None:
    async with Events() as events, aiores.Session() as session:
        vm = await session.manager(f"{FAST}&revoke=0.1&revoke_wait=1").acquire(D)
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED
        await events.until(vm.native_id, "revoked: delete-pending for 1 s")
        records = [e for e in events.seen if e["id"] == vm.native_id]
        notices = [e for e in records if e["detail"] == "delete-pending"]
        assert all(e["state"] == "ACTIVE" for e in notices)
        waits = [e["extra"]["max_wait_time"] for e in notices]
        # The notice, then more every quarter of it (one may come late on a busy
        # machine), each saying less time is left.
        assert len(waits) >= 3, waits
        assert waits == sorted(waits, reverse=True)
        assert len(set(waits)) == len(waits)
        assert 0 < waits[-1] < waits[0] <= 1
        last = records[-1]
        assert last["state"] == "EXPIRED"
        assert last["detail"].startswith("revoked")
        assert last["extra"]["max_wait_time"] == 0
        assert vm.extra["max_wait_time"] == 0
        assert not listening(port_of(vm))


@pytest.mark.asyncio
async def test_revocation_with_no_wait_means_gone_at_once() -> None:
    async with aiores.Session() as session:
        vm = await session.manager(FAST).acquire(
            D.replace(user_data="#sim: revoke=0 revoke_wait=0")
        )
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED
        assert vm.state_detail == "revoked: delete-pending with max_wait_time 0"
        assert vm.extra["max_wait_time"] == 0
        with pytest.raises(aiores.BadParameter, match="revoke_wait"):
            await session.manager(FAST).acquire(D.replace(user_data="#sim: revoke_wait=-1"))


@pytest.mark.asyncio
async def test_provider_values_are_pushed_as_extra_value() -> None:
    async with aiores.Session() as session:
        mgr = session.manager(FAST)
        vms = await mgr.acquire_many(D, 2)
        adaptor = await session.resource_adaptor(FAST)
        assert isinstance(adaptor, SimResourceAdaptor)
        await adaptor.set_values({vms[0].native_id: 9.5, vms[1].native_id: 1, "vm-gone": 3})
        # Pushed before the answer, on the same connection: the session's objects have
        # them without asking.
        assert vms[0].extra["value"] == 9.5
        assert vms[1].extra["value"] == 1
        with pytest.raises(aiores.BadParameter, match="values"):
            await adaptor.set_values({vms[0].native_id: math.nan})
        await mgr.destroy(vms)
