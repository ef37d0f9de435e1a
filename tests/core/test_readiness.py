"""ACTIVE means usable: a machine the backend calls running is ACTIVE once SSH answers."""

from __future__ import annotations

import asyncio

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.testing import FakeClock, FakePlugin, FakeSSHPlugin


@pytest.mark.asyncio
async def test_running_is_pending_until_ssh_answers(
    session: aiores.Session, fake: FakePlugin, fake_ssh: FakeSSHPlugin, clock: FakeClock
) -> None:
    fake_ssh.outcomes = [aiores.NoSuccess("connection refused")] * 2
    vm = await session.manager("fake://").acquire(ComputeDescription(tags={"x"}))
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    waiter = asyncio.ensure_future(vm.wait(ResourceState.ACTIVE))
    for _ in range(2):  # two refusals, each followed by a backoff sleep
        await clock.wait_for_sleepers(2)  # the watcher's and the probe's
        assert vm.state is ResourceState.PENDING
        assert vm.state_detail == "running"  # the backend's word is kept
        clock.advance(clock.next_deadline() - clock.now())  # type: ignore[operator]
    assert await waiter is ResourceState.ACTIVE
    assert [cmd for _, cmd in fake_ssh.commands] == ["true"] * 3
    assert session.journal is not None
    await session.journal.flush()
    assert await session.journal.transitions(vm.id) == [("PENDING", "ACTIVE")]


@pytest.mark.asyncio
async def test_refused_host_key_reaches_the_waiter_not_the_machine(
    session: aiores.Session, fake: FakePlugin, fake_ssh: FakeSSHPlugin
) -> None:
    fake_ssh.outcomes = [aiores.HostKeyError("host key for vm:22 changed: SHA256:abc")]
    vm = await session.manager("fake://").acquire(ComputeDescription())
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    with pytest.raises(aiores.HostKeyError, match="host key for vm:22 changed"):
        await vm.wait(ResourceState.ACTIVE)
    # Not the machine's fault: it stays PENDING, and waiting again probes again.
    assert vm.state is ResourceState.PENDING
    assert await vm.wait(ResourceState.ACTIVE) is ResourceState.ACTIVE
    assert len(fake_ssh.commands) == 2


@pytest.mark.asyncio
async def test_nobody_waiting_means_no_probe(
    session: aiores.Session, fake: FakePlugin, fake_ssh: FakeSSHPlugin
) -> None:
    mgr = session.manager("fake://")
    vms = await mgr.acquire_many(ComputeDescription(), 5)
    for vm in vms:
        fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    listed = await mgr.list()
    assert {r.state for r in listed} == {ResourceState.PENDING}
    assert {r.state_detail for r in listed} == {"running"}
    assert fake_ssh.commands == []


@pytest.mark.asyncio
async def test_ready_none_means_running_is_enough(
    session: aiores.Session, fake: FakePlugin, fake_ssh: FakeSSHPlugin
) -> None:
    vm = await session.manager("fake://").acquire(ComputeDescription(ready=None))
    fake.cloud.set_state(vm.native_id, ResourceState.ACTIVE, "running")
    assert await vm.wait(ResourceState.ACTIVE) is ResourceState.ACTIVE
    assert fake_ssh.commands == []


@pytest.mark.asyncio
async def test_pinned_host_keys_follow_the_resource(
    session: aiores.Session, fake: FakePlugin, fake_ssh: FakeSSHPlugin
) -> None:
    vm = await session.manager("fake://").acquire(ComputeDescription())
    info = fake.cloud.resources[vm.native_id]
    fake.cloud.resources[vm.native_id] = type(info)(
        id=info.id,
        state=ResourceState.ACTIVE,
        access="fake-ssh://root@127.0.0.1:2201",
        host_keys=("ssh-ed25519 AAAAC3Nza... vm-0",),
        login_keys=("/keys/id_ed25519",),
        token=info.token,
    )
    await vm.wait(ResourceState.ACTIVE)
    assert session.pinned_host_keys("127.0.0.1", 2201) == ("ssh-ed25519 AAAAC3Nza... vm-0",)
    assert session.login_keys("127.0.0.1", 2201) == ("/keys/id_ed25519",)
    assert session.pinned_host_keys("127.0.0.1", 22) == ()
    assert session.login_keys("127.0.0.1", 22) == ()
