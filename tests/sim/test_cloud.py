"""sim:// lifecycles: boot delays and states, destroy, expiry, faults, templates, finding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_sim import MANAGED_KEY, CloudClient, cloud_dir

from .conftest import STEP, listening, port_of

D = ComputeDescription(ready=None)  # ACTIVE = "the cloud says running" (no SSH probe)


class Events:
    """Every VM change the cloud pushes, on a control connection of the test's own."""

    def __init__(self) -> None:
        self.seen: list[Mapping[str, Any]] = []
        self._changed = asyncio.Event()
        self.client = CloudClient(
            cloud_dir(aiores.state_dir()), on_event=self._on_event, subscribe=True
        )

    def _on_event(self, vm: Mapping[str, Any]) -> None:
        self.seen.append(vm)
        self._changed.set()

    async def __aenter__(self) -> Events:
        await self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def more(self, seen: int) -> None:
        """Return once more than ``seen`` changes have come."""
        async with asyncio.timeout(STEP):
            while len(self.seen) <= seen:
                self._changed.clear()
                await self._changed.wait()

    async def until(self, vm_id: str, detail: str) -> Mapping[str, Any]:
        async with asyncio.timeout(STEP):
            while True:
                for vm in self.seen:
                    if vm["id"] == vm_id and vm["detail"] == detail:
                        return vm
                self._changed.clear()
                await self._changed.wait()


@pytest.mark.asyncio
async def test_boot_delay_pending_then_active() -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.3")
        start = time.monotonic()
        vm = await mgr.acquire(D.replace(tags={"boot"}, template="medium", image="sim-debian-12"))
        assert vm.state is ResourceState.PENDING
        # Known while it boots: where it will answer and which host key it will show.
        assert vm.access is not None
        assert vm.access.startswith("ssh://")
        assert vm.access.endswith(f"@127.0.0.1:{port_of(vm)}")
        assert len(vm.host_keys) == 1
        assert vm.host_keys[0].startswith("ssh-ed25519 ")
        assert vm.public_address == vm.private_address == "127.0.0.1"
        assert vm.tags == {"boot"}
        assert not listening(port_of(vm))
        assert await vm.wait(ResourceState.ACTIVE, timeout=STEP) is ResourceState.ACTIVE
        assert time.monotonic() - start >= 0.3
        assert vm.state_detail == "running"
        assert listening(port_of(vm))
        assert vm.extra["template"] == "medium"
        assert (vm.extra["cpus"], vm.extra["memory"]) == (2, 4096)
        assert vm.extra["image"] == "sim-debian-12"
        await vm.destroy()
        assert vm.state is ResourceState.CANCELED
        assert not listening(port_of(vm))
        assert not await asyncio.to_thread(Path(vm.extra["disk"]).exists)


@pytest.mark.asyncio
async def test_boot_delays_follow_the_distribution() -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.1-0.6&seed=7")
        start = time.monotonic()
        vms = await mgr.acquire_many(D, 8)
        done: list[float] = []

        async def active(vm: aiores.Compute) -> None:
            await vm.wait(ResourceState.ACTIVE, timeout=STEP)
            done.append(time.monotonic() - start)

        await asyncio.gather(*(active(vm) for vm in vms))
        assert min(done) >= 0.1
        assert max(done) - min(done) > 0.05  # drawn, not all alike
        await mgr.destroy(vms)
        assert {vm.state for vm in vms} == {ResourceState.CANCELED}


@pytest.mark.asyncio
async def test_destroy_while_booting_and_twice() -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=30")
        vm = await mgr.acquire(D)
        await vm.destroy()
        assert vm.state is ResourceState.CANCELED
        await vm.destroy()  # not an error
        with pytest.raises(aiores.IncorrectState):
            await vm.wait(ResourceState.ACTIVE)
        # Its record stays answerable: a fresh session sees it CANCELED.
    async with aiores.Session() as session:
        again = await session.manager("sim://").get(vm.native_id)
        assert again.state is ResourceState.CANCELED
        assert again.state_detail == "terminated"


@pytest.mark.asyncio
async def test_expiry_after_duration() -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.05")
        vm = await mgr.acquire(D.replace(duration=0.4))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED
        assert vm.state_detail.startswith("expired")
        assert not listening(port_of(vm))


@pytest.mark.asyncio
async def test_boot_failure() -> None:
    async with aiores.Session() as session:
        vm = await session.manager("sim://?boot_delay=0.05&boot_failure=1").acquire(D)
        with pytest.raises(aiores.IncorrectState, match="boot failed"):
            await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        assert vm.state is ResourceState.FAILED
        # A probability: some fail, some boot (seeded, so always the same ones).
        mgr = session.manager("sim://?boot_delay=0.05&boot_failure=0.5&seed=3")
        vms = await mgr.acquire_many(D, 10)

        async def settle(vm: aiores.Compute) -> ResourceState:
            try:
                return await vm.wait(ResourceState.ACTIVE, timeout=STEP)
            except aiores.IncorrectState:
                return vm.state

        await asyncio.gather(*(settle(vm) for vm in vms))
        seen = {vm.state for vm in vms}
        assert seen == {ResourceState.ACTIVE, ResourceState.FAILED}
        await mgr.destroy(vms)


@pytest.mark.asyncio
async def test_vm_dies_later() -> None:
    async with aiores.Session() as session:
        vm = await session.manager("sim://?boot_delay=0.05&die_after=0.3").acquire(D)
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        assert await vm.wait(timeout=STEP) is ResourceState.FAILED
        assert "died" in vm.state_detail
        assert not listening(port_of(vm))


@pytest.mark.asyncio
async def test_preemption_notice_then_gone() -> None:
    async with Events() as events, aiores.Session() as session:
        url = "sim://?boot_delay=0.05&preempt_after=0.1&preempt_notice=0.4"
        vm = await session.manager(url).acquire(D)
        notice = await events.until(vm.native_id, "preempting")
        assert notice["state"] == "ACTIVE"
        assert notice["extra"]["preempt_notice"] == 0.4
        assert notice["extra"]["preempt_at"] > time.time() - 1
        assert 0 < notice["extra"]["preempt_in"] <= 0.4
        assert await vm.wait(timeout=STEP) is ResourceState.EXPIRED
        assert vm.state_detail == "preempted"
        assert vm.extra["preempt_notice"] == 0.4


@pytest.mark.asyncio
async def test_preemption_countdown_is_fresh_without_waiting() -> None:
    async with Events() as events, aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.05&preempt_after=0.05&preempt_notice=1")
        vm = await mgr.acquire(D)
        # Nobody waits on it (no polling): the session hears what the cloud pushes.
        countdown: list[float] = []
        while not any(e["id"] == vm.native_id and e["detail"] == "preempted" for e in events.seen):
            await events.more(len(events.seen))
            again = await mgr.get(vm.id)
            assert again is vm
            if again.state_detail == "preempting":
                assert again.state is ResourceState.ACTIVE
                left = again.extra["preempt_in"]
                if left not in countdown:
                    countdown.append(left)
        # The notice, then the countdown every quarter of it (one may be missed here).
        assert len(countdown) >= 3, countdown
        assert countdown == sorted(countdown, reverse=True)
        assert all(0 <= left <= 1 for left in countdown)
        assert vm.extra["preempt_notice"] == 1


@pytest.mark.asyncio
async def test_faults_from_user_data_win_over_the_url() -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.05&boot_failure=1")
        vm = await mgr.acquire(D.replace(user_data="#!/bin/sh\n#sim: boot_failure=0\n"))
        assert await vm.wait(ResourceState.ACTIVE, timeout=STEP) is ResourceState.ACTIVE
        await vm.destroy()
        with pytest.raises(aiores.BadParameter, match="no option"):
            await mgr.acquire(D.replace(user_data="#sim: boot_speed=1\n"))


@pytest.mark.asyncio
async def test_templates_images_and_bad_requests() -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://")
        names = [t.name for t in await mgr.list_templates()]
        assert names == ["tiny", "small", "medium", "large", "xlarge"]
        assert (await mgr.get_template("large")).cpus == 4
        assert "sim-linux" in [i.name for i in await mgr.list_images()]
        with pytest.raises(aiores.DoesNotExist, match="huge"):
            await mgr.acquire(D.replace(template="huge"))
        with pytest.raises(aiores.DoesNotExist, match="sim-linux"):
            await mgr.acquire(D.replace(image="windows"))
        with pytest.raises(aiores.BadParameter, match="no template"):
            await mgr.acquire(D.replace(cpus=64))
        with pytest.raises(aiores.NotSupported):
            await mgr.acquire(aiores.StorageDescription())
        vm = await session.manager("sim://?boot_delay=30").acquire(D.replace(cpus=3))
        assert vm.extra["template"] == "large"  # the smallest with 3 CPUs
        await vm.destroy()
    for bad in ("sim://?boot_speed=1", "sim://?boot_failure=2", "sim://cloud.example"):
        async with aiores.Session() as session:
            with pytest.raises(aiores.IncorrectURL):
                await session.manager(bad).list_templates()


@pytest.mark.asyncio
async def test_list_and_find_by_tags_and_token() -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=30")
        web = await mgr.acquire_many(D.replace(tags={"t-list", "web"}), 2)
        db = await mgr.acquire(D.replace(tags={"t-list", "db"}))
        assert {vm.id for vm in await mgr.list(tags="t-list")} == {vm.id for vm in [*web, db]}
        assert {vm.id for vm in await mgr.list(tags=["t-list", "web"])} == {vm.id for vm in web}
        adaptor = await session.resource_adaptor("sim://?boot_delay=30")
        token = web[0]._info.token
        assert token is not None
        assert {i.id for i in await adaptor.find(token)} == {vm.native_id for vm in web}
        await mgr.destroy([*web, db])
        assert await mgr.list(tags="t-list") == []
        assert await adaptor.find(token) == []


@pytest.mark.asyncio
async def test_vms_name_the_managed_key_as_their_login_key(state_dir: Path) -> None:
    key = str(state_dir / MANAGED_KEY)
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=30")
        vm = await mgr.acquire(D.replace(tags={"t-login"}))
        assert vm._info.login_keys == (key,)
        assert session.login_keys("127.0.0.1", port_of(vm)) == (key,)
        [listed] = await mgr.list(tags="t-login")
        assert listed._info.login_keys == (key,)
        await vm.destroy()
        assert vm._info.login_keys == (key,)  # pushed and described records too
