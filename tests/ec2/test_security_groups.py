"""ec2:// security groups against moto: one group per ingress rule, never widened.

Each distinct set of ``ssh_cidr`` ranges has a group of its own, so a launch that
asks for a wide range leaves the groups of earlier, narrower launches as they were.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, REGION, STEP, aws_context, ec2_url, raw_client

pytestmark = pytest.mark.asyncio

#: The address range of moto's default VPC.
MOTO_VPC_RANGE = "172.31.0.0/16"


def vm_desc() -> ComputeDescription:
    return ComputeDescription(image=IMAGE, template="t3.micro", ready=None)


def ingress(group: dict[str, Any]) -> set[tuple[str, int, int, str]]:
    """The group's ingress rules as (protocol, from port, to port, range)."""
    rules: set[tuple[str, int, int, str]] = set()
    for perm in group["IpPermissions"]:
        # Rules naming other groups or prefix lists would let more in than the ranges.
        assert not perm.get("UserIdGroupPairs")
        assert not perm.get("PrefixListIds")
        ranges = [r["CidrIp"] for r in perm.get("IpRanges", [])]
        ranges += [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", [])]
        rules.update((perm["IpProtocol"], perm["FromPort"], perm["ToPort"], c) for c in ranges)
    return rules


def ssh_from(*ranges: str) -> set[tuple[str, int, int, str]]:
    return {("tcp", 22, 22, c) for c in ranges}


async def group_of(server: MotoServer, instance_id: str) -> dict[str, Any]:
    """The one security group an instance launched with, as EC2 describes it now."""
    async with raw_client(server) as client:
        answer = await client.describe_instances(InstanceIds=[instance_id])
        (instance,) = answer["Reservations"][0]["Instances"]
        (ref,) = instance["SecurityGroups"]
        groups = await client.describe_security_groups(GroupIds=[ref["GroupId"]])
    (group,) = groups["SecurityGroups"]
    return dict(group)


async def aiores_groups(server: MotoServer) -> list[dict[str, Any]]:
    """Every security group whose name starts with ``aiores``."""
    async with raw_client(server) as client:
        answer = await client.describe_security_groups()
    return [g for g in answer["SecurityGroups"] if g["GroupName"].startswith("aiores")]


def forget_setup() -> None:
    """Drop what the state directory remembers, so the next acquire looks in EC2 again."""
    (aiores.state_dir() / "ec2" / "setup.json").unlink()


async def test_a_wider_range_gets_its_own_group_and_the_narrower_one_is_unchanged(
    moto: MotoServer, session: aiores.Session
) -> None:
    narrow = await session.manager(ec2_url(moto, ssh_cidr="10.1.2.0/24")).acquire(vm_desc())
    assert narrow.native_id is not None
    before = await group_of(moto, narrow.native_id)
    assert ingress(before) == ssh_from("10.1.2.0/24")
    wide = await session.manager(ec2_url(moto, ssh_cidr="0.0.0.0/0")).acquire(vm_desc())
    assert wide.native_id is not None
    after = await group_of(moto, narrow.native_id)
    wide_group = await group_of(moto, wide.native_id)
    assert wide_group["GroupId"] != after["GroupId"]
    assert after == before  # same id, name, rules: the earlier instance allows what it did
    assert ingress(after) == ssh_from("10.1.2.0/24")
    assert ingress(wide_group) == ssh_from("0.0.0.0/0")
    groups = await aiores_groups(moto)
    assert sorted(g["GroupId"] for g in groups) == sorted([after["GroupId"], wide_group["GroupId"]])
    for group in groups:
        assert group["GroupName"].startswith("aiores-ssh-")
        tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
        assert tags["aiores:managed"] == "1"
    tags = {t["Key"]: t["Value"] for t in wide_group["Tags"]}
    assert tags["aiores:ssh_cidr"] == "0.0.0.0/0"
    await session.manager(ec2_url(moto, ssh_cidr="10.1.2.0/24")).destroy([narrow])
    await wide.destroy()


async def test_the_same_ranges_reuse_one_group(moto: MotoServer) -> None:
    # The same set written differently (order, host bits) is the same rule; each
    # session starts from an empty memory, so the group is found in EC2 by its name.
    spellings = ["10.1.2.0/24,192.0.2.0/24", "192.0.2.0/24,10.1.2.7/24"]
    groups = []
    for ranges in spellings:
        async with aiores.Session(contexts=[aws_context()]) as session:
            vm = await session.manager(ec2_url(moto, ssh_cidr=ranges)).acquire(vm_desc())
            assert vm.native_id is not None
            groups.append(await group_of(moto, vm.native_id))
            await vm.destroy()
        forget_setup()
    assert groups[0] == groups[1]
    assert groups[0]["GroupName"].startswith("aiores-ssh-")
    assert ingress(groups[0]) == ssh_from("10.1.2.0/24", "192.0.2.0/24")
    assert [g["GroupId"] for g in await aiores_groups(moto)] == [groups[0]["GroupId"]]
    assert (await moto.calls())["CreateSecurityGroup"] == 1


async def test_concurrent_first_uses_of_one_range_end_in_one_group(moto: MotoServer) -> None:
    # Two programs (two sessions with no memory yet) make the same group at once.
    url = ec2_url(moto, ssh_cidr="198.51.100.0/24")
    async with (
        aiores.Session(contexts=[aws_context()]) as one,
        aiores.Session(contexts=[aws_context()]) as two,
    ):
        async with asyncio.timeout(STEP):
            vms = await asyncio.gather(
                one.manager(url).acquire(vm_desc()), two.manager(url).acquire(vm_desc())
            )
        ids = [vm.native_id for vm in vms]
        assert None not in ids
        groups = [await group_of(moto, str(i)) for i in ids]
        for vm in vms:
            await vm.destroy()
    assert groups[0]["GroupId"] == groups[1]["GroupId"]
    assert groups[0]["GroupName"].startswith("aiores-ssh-")
    assert ingress(groups[0]) == ssh_from("198.51.100.0/24")
    assert len(await aiores_groups(moto)) == 1


async def test_without_ssh_cidr_the_group_admits_the_vpc_range_only(
    moto: MotoServer, session: aiores.Session
) -> None:
    url = f"ec2://{REGION}?endpoint={moto.url}&poll=0.2"
    vm = await session.manager(url).acquire(vm_desc())
    assert vm.native_id is not None
    group = await group_of(moto, vm.native_id)
    assert group["GroupName"].startswith("aiores-ssh-")
    assert ingress(group) == ssh_from(MOTO_VPC_RANGE)
    # Naming the VPC's range explicitly is the same rule, hence the same group.
    forget_setup()
    again = await session.manager(ec2_url(moto, ssh_cidr=MOTO_VPC_RANGE)).acquire(vm_desc())
    assert again.native_id is not None
    assert (await group_of(moto, again.native_id))["GroupId"] == group["GroupId"]
    await vm.destroy()
    await again.destroy()


async def test_rules_added_to_an_aiores_group_by_hand_are_revoked_when_it_is_found(
    moto: MotoServer,
) -> None:
    url = ec2_url(moto, ssh_cidr="10.1.2.0/24")
    async with aiores.Session(contexts=[aws_context()]) as session:
        vm = await session.manager(url).acquire(vm_desc())
        assert vm.native_id is not None
        group = await group_of(moto, vm.native_id)
        await vm.destroy()
    async with raw_client(moto) as client:
        await client.authorize_security_group_ingress(
            GroupId=group["GroupId"],
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                },
                {
                    "IpProtocol": "tcp",
                    "FromPort": 80,
                    "ToPort": 80,
                    "IpRanges": [{"CidrIp": "10.9.0.0/16"}],
                },
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "Ipv6Ranges": [{"CidrIpv6": "::/0"}],
                },
            ],
        )
    assert ingress(await group_of(moto, vm.native_id)) != ssh_from("10.1.2.0/24")
    forget_setup()
    async with aiores.Session(contexts=[aws_context()]) as session:
        again = await session.manager(url).acquire(vm_desc())
        assert again.native_id is not None
        found = await group_of(moto, again.native_id)
        await again.destroy()
    assert found["GroupId"] == group["GroupId"]
    assert ingress(found) == ssh_from("10.1.2.0/24")


async def test_a_remembered_shared_group_from_before_is_not_used(moto: MotoServer) -> None:
    # An entry in the state directory that names a group but not its rule (as the
    # single shared group was remembered) is not trusted: the launch finds or makes
    # the group of its own rule.
    url = ec2_url(moto, ssh_cidr="10.1.2.0/24")
    async with aiores.Session(contexts=[aws_context()]) as session:
        vm = await session.manager(url).acquire(vm_desc())
        await vm.destroy()
    async with raw_client(moto) as client:
        vpcs = await client.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
        shared = await client.create_security_group(
            GroupName="aiores", Description="shared", VpcId=vpcs["Vpcs"][0]["VpcId"]
        )
        await client.authorize_security_group_ingress(
            GroupId=shared["GroupId"],
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
                }
            ],
        )
    path = aiores.state_dir() / "ec2" / "setup.json"
    cache = json.loads(path.read_text())
    (key,) = cache
    cache[key] = {"key_name": cache[key]["key_name"], "group_id": shared["GroupId"]}
    path.write_text(json.dumps(cache))
    async with aiores.Session(contexts=[aws_context()]) as session:
        again = await session.manager(url).acquire(vm_desc())
        assert again.native_id is not None
        group = await group_of(moto, again.native_id)
        await again.destroy()
    assert group["GroupId"] != shared["GroupId"]
    assert ingress(group) == ssh_from("10.1.2.0/24")
