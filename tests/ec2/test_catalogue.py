"""ec2:// templates, images, sizing by cpus/memory, reconfig, spot."""

from __future__ import annotations

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, alive, ec2_url, raw_client

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


async def test_spot_market(moto: MotoServer, session: aiores.Session) -> None:
    mgr = session.manager(ec2_url(moto, market="spot"))
    vms = await mgr.acquire_many(ComputeDescription(image=IMAGE, ready=None), 2)
    assert {vm.extra["lifecycle"] for vm in vms} == {"spot"}
    await mgr.destroy(vms)
    assert await alive(moto) == []
