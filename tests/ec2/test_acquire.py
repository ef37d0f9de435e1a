"""ec2:// against moto: batched launch, tags, watching, destroy, set-up reused, user data."""

from __future__ import annotations

import asyncio
import stat

import asyncssh
import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_ec2 import MANAGED_KEY, EC2ResourceAdaptor
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, STEP, alive, aws_context, cloud_config, ec2_url, raw_client
from .fake_instance import serve_instance

pytestmark = pytest.mark.asyncio


def vm_desc(**fields: object) -> ComputeDescription:
    return ComputeDescription(image=IMAGE, template="t3.micro", ready=None, **fields)  # type: ignore[arg-type]


async def test_hundred_instances_one_run_one_terminate(
    moto: MotoServer, session: aiores.Session
) -> None:
    mgr = session.manager(ec2_url(moto))
    vms = await mgr.acquire_many(vm_desc(tags={"web", "batch-7"}), 100)
    assert len({vm.id for vm in vms}) == 100
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    calls = await moto.calls()
    assert calls["RunInstances"] == 1
    vm = vms[0]
    assert vm.state_detail == "running"
    assert vm.tags == {"web", "batch-7"}
    assert vm.access is not None
    assert vm.access.startswith("ssh://ec2-user@")
    assert vm.access.endswith(":22")
    assert vm.public_address is not None
    assert vm.public_address in vm.access
    assert vm.private_address is not None
    assert len(vm.host_keys) == 1
    assert vm.host_keys[0].startswith("ssh-ed25519 ")
    assert vm.extra["instance_type"] == "t3.micro"
    # The tags are on the instances themselves (what find and recovery rely on).
    async with raw_client(moto) as client:
        answer = await client.describe_instances(InstanceIds=[vm.native_id])
    tags = {t["Key"]: t["Value"] for t in answer["Reservations"][0]["Instances"][0]["Tags"]}
    assert tags["aiores:managed"] == "1"
    assert tags["aiores:session"] == session.id
    assert tags["aiores:token"].startswith("t-")
    assert tags["aiores:tag:web"] == tags["aiores:tag:batch-7"] == "1"
    assert tags["aiores:hostkey"] == vm.host_keys[0]
    # The session pins the host key for the access address and offers the managed key.
    assert session.pinned_host_keys(vm.public_address, 22) == vm.host_keys
    assert session.login_keys(vm.public_address, 22) == (str(aiores.state_dir() / MANAGED_KEY),)
    await moto.reset_calls()
    await mgr.destroy(vms)
    assert (await moto.calls()).get("TerminateInstances") == 1
    assert all(vm.state is ResourceState.CANCELED for vm in vms)
    assert await alive(moto) == []


async def test_watcher_makes_one_describe_per_tick(
    moto: MotoServer, session: aiores.Session
) -> None:
    await moto.set_faults(pending=4.0)
    mgr = session.manager(ec2_url(moto))
    vms = await mgr.acquire_many(vm_desc(), 100)
    assert {vm.state for vm in vms} == {ResourceState.PENDING}
    await moto.reset_calls()
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    watcher = vms[0]._watcher
    calls = await moto.calls()
    assert calls["DescribeInstances"] == watcher.describe_calls == watcher.ticks
    # ~4 s of pending from a 0.2 s floor (backing off): a few ticks for all 100.
    assert 2 <= watcher.ticks <= 15
    await mgr.destroy(vms)


async def test_key_pair_and_group_made_once_and_reused(moto: MotoServer, state_dir: object) -> None:
    url = ec2_url(moto)
    setup = {
        "DescribeKeyPairs",
        "ImportKeyPair",
        "DescribeVpcs",
        "DescribeSecurityGroups",
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
    }
    made: dict[str, int] = {}
    for first in (True, False):  # two sessions, two acquires each
        await moto.reset_calls()
        async with aiores.Session(contexts=[aws_context()]) as session:
            mgr = session.manager(url)
            for _ in range(2):
                vm = await mgr.acquire(vm_desc())
                await vm.destroy()
        calls = await moto.calls()
        if first:
            made = calls
        else:  # remembered in the state directory: no set-up call at all
            assert not setup & set(calls)
    calls = made
    assert calls["ImportKeyPair"] == 1
    assert calls["CreateSecurityGroup"] == 1
    assert calls["AuthorizeSecurityGroupIngress"] == 1
    assert calls["RunInstances"] == 2
    key = aiores.state_dir() / MANAGED_KEY
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    async with raw_client(moto) as client:
        groups = await client.describe_security_groups(
            Filters=[{"Name": "tag:aiores:managed", "Values": ["1"]}]
        )
        pairs = await client.describe_key_pairs()
    (group,) = groups["SecurityGroups"]
    assert group["GroupName"].startswith("aiores-ssh-")
    rules = [(p["FromPort"], r["CidrIp"]) for p in group["IpPermissions"] for r in p["IpRanges"]]
    assert rules == [(22, "127.0.0.1/32")]  # SSH from loopback, nothing else
    assert [p["KeyName"] for p in pairs["KeyPairs"]] == [
        n for n in [p["KeyName"] for p in pairs["KeyPairs"]] if n.startswith("aiores-")
    ]
    assert len(pairs["KeyPairs"]) == 1


async def test_a_remembered_group_that_is_gone_is_made_again(
    moto: MotoServer, state_dir: object
) -> None:
    url = ec2_url(moto)
    for _ in range(2):
        async with aiores.Session(contexts=[aws_context()]) as session:
            vm = await session.manager(url).acquire(vm_desc())
            await vm.destroy()
        await moto.reset()  # the key pair and group are gone; the state dir remembers them
    async with aiores.Session(contexts=[aws_context()]) as session:
        vm = await session.manager(url).acquire(vm_desc())
        await vm.destroy()
    calls = await moto.calls()
    assert calls["CreateSecurityGroup"] == 1
    assert calls["RunInstances"] == 2  # refused for the gone group, then launched


async def test_user_data_carries_the_host_key_after_the_users_part(
    moto: MotoServer, session: aiores.Session
) -> None:
    mgr = session.manager(ec2_url(moto))
    script = "#!/bin/sh\necho hello > /tmp/hello\n"
    vms = await mgr.acquire_many(vm_desc(user_data=script, duration=600), 2)
    async with raw_client(moto) as client:
        attr = await client.describe_instance_attribute(
            InstanceId=vms[0].native_id, Attribute="userData"
        )
        answer = await client.describe_instances(InstanceIds=[vms[0].native_id])
    types, config = cloud_config(attr["UserData"]["Value"])
    assert types == ["text/x-shellscript", "text/cloud-config"]
    assert config["ssh_keys"]["ed25519_public"] == vms[0].host_keys[0]
    assert config["ssh_keys"]["ed25519_private"].startswith("-----BEGIN OPENSSH PRIVATE KEY")
    assert config["ssh_genkeytypes"] == []
    assert config["power_state"]["delay"] == "+10"
    # One host key per RunInstances call: both instances of the batch share it.
    assert vms[1].host_keys == vms[0].host_keys
    inst = answer["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert "aiores:expires" in tags
    # The instances are logged in to with the managed key, which the session learns.
    assert vms[0]._info.login_keys == (str(aiores.state_dir() / MANAGED_KEY),)
    await mgr.destroy(vms)


async def test_reconnect_describe_list_and_unknown_ids(
    moto: MotoServer, session: aiores.Session
) -> None:
    url = ec2_url(moto)
    mgr = session.manager(url)
    vms = await mgr.acquire_many(vm_desc(tags={"db"}), 3)
    others = await mgr.acquire_many(vm_desc(tags={"web"}), 2)
    async with aiores.Session(contexts=[aws_context()]) as other:
        again = await other.manager(url).get(vms[0].id)
        assert again.native_id == vms[0].native_id
        assert again.host_keys == vms[0].host_keys
        assert again.tags == {"db"}
        listed = await other.manager(url).list(tags="db")
        assert sorted(r.native_id for r in listed) == sorted(vm.native_id for vm in vms)
        assert len(await other.manager(url).list()) == 5
        with pytest.raises(aiores.DoesNotExist):
            await other.manager(url).get("i-0123456789abcdef0")
    adaptor = await session.resource_adaptor(url)
    assert isinstance(adaptor, EC2ResourceAdaptor)
    described = await adaptor.describe([vms[0].native_id, "i-0123456789abcdef0", "bogus"])
    assert list(described) == [vms[0].native_id]
    # Destroying ids already gone (or never there) is not an error.
    await mgr.destroy([*vms, *others])
    await adaptor.destroy([vms[0].native_id, "i-0123456789abcdef1"])
    assert await alive(moto) == []


async def test_large_counts_launch_in_batches_under_one_token(
    moto: MotoServer, session: aiores.Session
) -> None:
    mgr = session.manager(ec2_url(moto, batch="4"))
    vms = await mgr.acquire_many(vm_desc(), 10)
    assert len(vms) == 10
    assert (await moto.calls())["RunInstances"] == 3  # 4 + 4 + 2
    async with raw_client(moto) as client:
        answer = await client.describe_instances(InstanceIds=[vm.native_id for vm in vms])
    instances = [i for r in answer["Reservations"] for i in r["Instances"]]
    tokens = {t["Value"] for i in instances for t in i["Tags"] if t["Key"] == "aiores:token"}
    assert len(tokens) == 1  # one aiores token finds them all
    assert len({i["ClientToken"] for i in instances}) == 3  # one ClientToken per call
    await mgr.destroy(vms)
    assert await alive(moto) == []


async def test_ssh_verifies_the_injected_host_key_and_logs_in_with_the_managed_key(
    moto: MotoServer, session: aiores.Session
) -> None:
    """The whole chain, with a stand-in for cloud-init: ACTIVE once SSH answers."""
    mgr = session.manager(ec2_url(moto))
    desc = ComputeDescription(image=IMAGE, template="t3.micro")  # ready="ssh"
    vm, impostor = await mgr.acquire_many(desc, 2)
    assert vm.public_address is not None
    assert vm.public_address.startswith("127.")  # the test server's loopback addresses
    assert impostor.public_address is not None
    authorized = (aiores.state_dir() / MANAGED_KEY).with_suffix(".pub").read_text()
    async with raw_client(moto) as client:
        attr = await client.describe_instance_attribute(
            InstanceId=vm.native_id, Attribute="userData"
        )
    _, config = cloud_config(attr["UserData"]["Value"])
    other = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    servers = [
        await serve_instance(vm.public_address, config, authorized),
        await serve_instance(impostor.public_address, config, authorized, host_key=other),
    ]
    try:
        async with asyncio.timeout(STEP):
            await vm.wait(ResourceState.ACTIVE)
            result = await vm.run("echo hello from the instance")
            assert result.exit_status == 0
            assert result.stdout == "hello from the instance\n"
            # Same batch, same published key, but the server shows another one.
            with pytest.raises(aiores.HostKeyError):
                await impostor.wait(ResourceState.ACTIVE)
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        await mgr.destroy([vm, impostor])
