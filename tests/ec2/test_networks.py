"""ec2:// networks against moto: VPC or default-VPC subnet, group rules, placement, reap."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription, Network, NetworkDescription, ResourceState
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer

from .conftest import IMAGE, aws_context, ec2_url, raw_client

pytestmark = pytest.mark.asyncio

CHILD = Path(__file__).parent.parent / "sim" / "network_child.py"
VM = ComputeDescription(image=IMAGE, template="t2.micro", ready=None)


async def _group(server: MotoServer, group_id: str) -> dict[str, Any]:
    async with raw_client(server) as client:
        answer = await client.describe_security_groups(GroupIds=[group_id])
    group: dict[str, Any] = answer["SecurityGroups"][0]
    return group


def _rules(group: dict[str, Any]) -> list[tuple[str, Any, Any, tuple[str, ...], tuple[str, ...]]]:
    """Each ingress rule as (protocol, from, to, ranges, source groups), sorted."""
    return sorted(
        (
            p["IpProtocol"],
            p.get("FromPort"),
            p.get("ToPort"),
            tuple(sorted(r["CidrIp"] for r in p.get("IpRanges", []))),
            tuple(sorted(g["GroupId"] for g in p.get("UserIdGroupPairs", []))),
        )
        for p in group["IpPermissions"]
    )


async def _vpcs(server: MotoServer) -> list[dict[str, Any]]:
    async with raw_client(server) as client:
        answer = await client.describe_vpcs(
            Filters=[{"Name": "tag:aiores:managed", "Values": ["1"]}]
        )
    return list(answer["Vpcs"])


async def test_a_vpc_network_its_group_rules_placement_and_destroy(moto: MotoServer) -> None:
    url = ec2_url(moto)
    async with aiores.Session(contexts=[aws_context()]) as session:
        mgr = session.manager(url)
        net = await mgr.acquire(
            NetworkDescription(cidr="10.20.0.0/24", tags={"lab"}, ingress=["198.51.100.7/24"])
        )
        assert isinstance(net, Network)
        assert net.state is ResourceState.ACTIVE
        assert net.native_id.startswith("vpc-")
        assert net.access == net.native_id
        assert net.cidr == "10.20.0.0/24"
        assert net.tags == {"lab"}
        group_id = net.extra["security_group"]
        group = await _group(moto, group_id)
        # Exactly: everything from the group itself, SSH from the range asked for.
        assert _rules(group) == [
            ("-1", None, None, (), (group_id,)),
            ("tcp", 22, 22, ("198.51.100.0/24",), ()),
        ]
        tags = {t["Key"]: t["Value"] for t in group["Tags"]}
        assert tags["aiores:network"] == net.native_id
        assert tags["aiores:session"] == session.id
        assert [n.id for n in await mgr.list(rtype="network", tags={"lab"})] == [net.id]
        with pytest.raises(aiores.BadParameter, match=r"overlaps 10\.20\.0\.0/24"):
            await mgr.acquire(NetworkDescription(cidr="10.20.0.0/16"))
        vms = await mgr.acquire_many(VM.replace(network=net), 2)
        async with raw_client(moto) as client:
            answer = await client.describe_instances(InstanceIds=[vm.native_id for vm in vms])
        for inst in (i for r in answer["Reservations"] for i in r["Instances"]):
            assert inst["SubnetId"] == net.extra["subnet"]
            assert [g["GroupId"] for g in inst["SecurityGroups"]] == [group_id]
        for vm in vms:
            assert vm.private_address is not None
            assert vm.private_address.startswith("10.20.0.")
        with pytest.raises(aiores.IncorrectState, match="still used by 2 instance"):
            await net.destroy()
        with pytest.raises(aiores.BadParameter, match="belongs to sim://"):
            await mgr.acquire(VM.replace(network="[sim://]-[net-0123456789]"))
        await mgr.destroy([*vms, net])  # instances first, then the network
        assert net.state is ResourceState.CANCELED
    assert await _vpcs(moto) == []
    async with raw_client(moto) as client:
        groups = await client.describe_security_groups(
            Filters=[{"Name": "tag:aiores:network", "Values": [net.native_id]}]
        )
    assert groups["SecurityGroups"] == []


async def test_open_network_gets_a_gateway_and_ssh_cidr_is_the_default_ingress(
    moto: MotoServer,
) -> None:
    url = ec2_url(moto, ssh_cidr="203.0.113.0/24")
    async with aiores.Session(contexts=[aws_context()]) as session:
        mgr = session.manager(url)
        net = await mgr.acquire(NetworkDescription(isolated=False))
        assert net.cidr == "10.0.0.0/16"  # the first free /16 of 10.0.0.0/8
        group_id = net.extra["security_group"]
        assert _rules(await _group(moto, group_id)) == [
            ("-1", None, None, (), (group_id,)),
            ("tcp", 22, 22, ("203.0.113.0/24",), ()),
        ]
        async with raw_client(moto) as client:
            gateways = await client.describe_internet_gateways(
                Filters=[{"Name": "attachment.vpc-id", "Values": [net.native_id]}]
            )
            tables = await client.describe_route_tables(
                Filters=[{"Name": "tag:aiores:network", "Values": [net.native_id]}]
            )
        (gateway,) = gateways["InternetGateways"]
        (table,) = tables["RouteTables"]
        routes = {r["DestinationCidrBlock"]: r.get("GatewayId") for r in table["Routes"]}
        assert routes["0.0.0.0/0"] == gateway["InternetGatewayId"]
        isolated = await mgr.acquire(NetworkDescription())
        assert isolated.cidr == "10.1.0.0/16"
        async with raw_client(moto) as client:
            none = await client.describe_internet_gateways(
                Filters=[{"Name": "attachment.vpc-id", "Values": [isolated.native_id]}]
            )
        assert none["InternetGateways"] == []
        await mgr.destroy([net, isolated])
    assert await _vpcs(moto) == []
    async with raw_client(moto) as client:
        left = await client.describe_internet_gateways(
            Filters=[{"Name": "tag:aiores:managed", "Values": ["1"]}]
        )
    assert left["InternetGateways"] == []


async def test_a_subnet_of_the_default_vpc(moto: MotoServer) -> None:
    url = ec2_url(moto, network="default")
    async with aiores.Session(contexts=[aws_context()]) as session:
        mgr = session.manager(url)
        net = await mgr.acquire(NetworkDescription())
        assert net.native_id.startswith("subnet-")
        assert net.extra["mode"] == "default"
        async with raw_client(moto) as client:
            vpc = (await client.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}]))[
                "Vpcs"
            ][0]
        assert net.extra["vpc"] == vpc["VpcId"]
        with pytest.raises(aiores.BadParameter, match="not inside the default VPC"):
            await mgr.acquire(NetworkDescription(cidr="10.30.0.0/24"))
        vm = await mgr.acquire(VM.replace(network=net.id))
        assert vm.private_address is not None
        assert net.cidr is not None
        await mgr.destroy([vm, net])
        async with raw_client(moto) as client:
            subnets = await client.describe_subnets(SubnetIds=[])
        assert net.native_id not in {s["SubnetId"] for s in subnets["Subnets"]}


async def test_reap_releases_a_network_and_its_instances_left_by_a_killed_program(
    moto: MotoServer,
) -> None:
    url = ec2_url(moto)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(CHILD), url, "ec2netkill", "2", IMAGE, "t2.micro"],
        capture_output=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert child.returncode == -9, child.stderr
    net_id, *vm_ids = child.stdout.decode().split()
    assert len(await _vpcs(moto)) == 1
    async with aiores.Session(contexts=[aws_context()]) as session:
        reaped = await session.reap()
        assert reaped.problems == []
        assert sorted(reaped.released) == sorted([net_id, *vm_ids])
        assert await session.manager(url).list(tags={"ec2netkill"}) == []
    assert await _vpcs(moto) == []


async def test_a_cancelled_network_acquire_leaves_nothing(moto: MotoServer) -> None:
    url = ec2_url(moto)
    await moto.set_faults(delay_after={"CreateSecurityGroup": 3})
    async with aiores.Session(contexts=[aws_context()]) as session:
        acquiring = asyncio.ensure_future(
            session.manager(url).acquire(NetworkDescription(isolated=False))
        )
        async with asyncio.timeout(30):
            while (await moto.calls()).get("CreateSecurityGroup", 0) < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert len(await _vpcs(moto)) == 1  # made, tagged with the acquire's token
        acquiring.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acquiring
        assert session.journal is not None
        assert await session.journal.in_flight() == []
    await moto.set_faults(clear=True)
    assert await _vpcs(moto) == []
    async with raw_client(moto) as client:
        groups = await client.describe_security_groups(
            Filters=[{"Name": "tag:aiores:managed", "Values": ["1"]}]
        )
    assert [g for g in groups["SecurityGroups"] if g["GroupName"].startswith("aiores-net")] == []
