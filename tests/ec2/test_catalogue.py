"""ec2:// templates, images, sizing by cpus/memory, reconfig, spot."""

from __future__ import annotations

import asyncio

import pytest

import aiores
import aiores_ec2._adaptor
from aiores import ComputeDescription, ResourceState
from aiores_ec2 import EC2ResourceAdaptor
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, STEP, alive, aws_context, ec2_url, raw_client

pytestmark = pytest.mark.asyncio


async def test_templates_and_images(moto: MotoServer, session: aiores.Session) -> None:
    # moto answers all 1395 types in one slow page: ask for some families only.
    mgr = session.manager(ec2_url(moto, owners="self", types="t3.*,m5.*"))
    templates = await mgr.list_templates()
    assert {t.name.split(".")[0] for t in templates} == {"t3", "m5"}
    micro = await mgr.get_template("t3.micro")
    assert (micro.cpus, micro.memory) == (2, 1024)
    calls = (await moto.calls())["DescribeInstanceTypes"]
    await mgr.list_templates()  # kept: not asked again
    assert (await moto.calls())["DescribeInstanceTypes"] == calls
    vm = await mgr.acquire(ComputeDescription(image=IMAGE, ready=None))
    async with raw_client(moto) as client:
        made = await client.create_image(InstanceId=vm.native_id, Name="aiores-test-image")
    await vm.destroy()
    images = await mgr.list_images()
    assert [(i.name, i.description) for i in images] == [(made["ImageId"], "aiores-test-image")]
    with pytest.raises(aiores.DoesNotExist, match=r"no template 'x9\.enormous'"):
        await mgr.get_template("x9.enormous")


async def test_size_from_cpus_and_memory(moto: MotoServer, session: aiores.Session) -> None:
    mgr = session.manager(ec2_url(moto, types="m5.*,c5.*,t3.*"))
    vm = await mgr.acquire(ComputeDescription(image=IMAGE, cpus=4, memory=30000, ready=None))
    chosen = await mgr.get_template(vm.extra["instance_type"])
    assert chosen.cpus is not None
    assert chosen.memory is not None
    assert chosen.cpus >= 4
    assert chosen.memory >= 30000
    await vm.destroy()


async def test_reconfig_changes_the_type_by_stop_modify_start(
    moto: MotoServer, session: aiores.Session
) -> None:
    mgr = session.manager(ec2_url(moto))
    desc = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)
    vm = await mgr.acquire(desc)
    await vm.wait(ResourceState.ACTIVE, timeout=30)
    await vm.reconfig(desc.replace(template="m5.large"))
    assert vm.extra["instance_type"] == "m5.large"
    assert vm.state is ResourceState.ACTIVE
    assert vm.state_detail == "running"
    calls = await moto.calls()
    assert calls["StopInstances"] == calls["StartInstances"] == 1
    assert calls["ModifyInstanceAttribute"] == 1
    with pytest.raises(aiores.NotSupported, match="instance type"):
        await vm.reconfig(desc.replace(template=None))
    await vm.destroy()
    assert await alive(moto) == []


async def test_reconfig_deadline_raises_timeout_naming_what_timed_out(
    moto: MotoServer, session: aiores.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    mgr = session.manager(ec2_url(moto))
    desc = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)
    vm = await mgr.acquire(desc)
    await vm.wait(ResourceState.ACTIVE, timeout=STEP)
    # Every describe now takes 0.4 s: the one after StopInstances outlasts the deadline.
    monkeypatch.setattr(aiores_ec2._adaptor, "RECONFIG_TIMEOUT", 0.1)
    await moto.set_faults(delay_before={"DescribeInstances": 0.4})
    async with asyncio.timeout(STEP):
        with pytest.raises(aiores.Timeout, match=r"did not become stopped in time"):
            await vm.reconfig(desc.replace(template="m5.large"))
    await moto.set_faults(clear=True)
    assert (await moto.calls())["StopInstances"] == 1
    await vm.destroy()


class StallingClock:
    """The loop's clock, whose sleeps in one task raise an aiores.Timeout of their own
    (a lower layer's deadline passing inside the adaptor's)."""

    def __init__(self) -> None:
        self.task: asyncio.Task[object] | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        if self.task is not None and asyncio.current_task() is self.task:
            raise aiores.Timeout("the probe's own deadline passed")
        await asyncio.sleep(seconds)


async def test_an_inner_timeout_under_the_reconfig_deadline_keeps_its_message(
    moto: MotoServer,
) -> None:
    clock = StallingClock()
    async with aiores.Session(contexts=[aws_context()], clock=clock) as session:
        url = ec2_url(moto)
        vm = await session.manager(url).acquire(ComputeDescription(image=IMAGE, ready=None))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        adaptor = await session.resource_adaptor(url)
        assert isinstance(adaptor, EC2ResourceAdaptor)

        async def wait_stopped() -> None:
            # The instance runs: the wait for "stopped" sleeps, and the sleep times out.
            await adaptor._until(vm.native_id, "stopped")

        clock.task = asyncio.ensure_future(wait_stopped())
        async with asyncio.timeout(STEP):
            with pytest.raises(aiores.Timeout) as caught:
                await clock.task
        assert str(caught.value) == "the probe's own deadline passed"
        await vm.destroy()


async def test_spot_market(moto: MotoServer, session: aiores.Session) -> None:
    mgr = session.manager(ec2_url(moto, market="spot"))
    vms = await mgr.acquire_many(ComputeDescription(image=IMAGE, ready=None), 2)
    assert {vm.extra["lifecycle"] for vm in vms} == {"spot"}
    await mgr.destroy(vms)
    assert await alive(moto) == []
