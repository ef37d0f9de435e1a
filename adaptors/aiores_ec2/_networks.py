"""Networks of ``ec2://``: a VPC (or a subnet of the default VPC), its subnet and group.

The ``network`` option of the URL says which:

- ``network=vpc`` (the default): a VPC of the network's range, one subnet of the
  whole range, a security group. The network's id is the VPC's (``vpc-...``).
- ``network=default``: a subnet of the region's default VPC (the range must lie in
  the VPC's and overlap none of its subnets; the default is the first free ``/24``),
  a security group there. The network's id is the subnet's (``subnet-...``).

The group ``aiores-net-<id>`` admits exactly two things: every protocol and port
from members of the group itself (machines of the network reach each other), and
TCP 22 from the ranges asked for (``NetworkDescription.ingress``, else the URL's
``ssh_cidr`` option, else none). Machines acquired with
``ComputeDescription(network=...)`` launch into its subnet with that group alone.

Routes to the internet are made only when asked (``isolated=False``): in a VPC of
its own, an internet gateway, a route table with a default route to it, and public
addresses for its machines. A subnet of the default VPC is isolated with a route
table of its own that has no default route (the default VPC's main table has one);
with ``isolated=False`` it keeps the main table.

Everything carries ``aiores:managed=1``, ``aiores:session``, ``aiores:token`` (set
at creation, so a program killed midway leaves nothing unnamed) and
``aiores:network=<id>`` where the id is known; the VPC or subnet that is the network
carries ``aiores:rtype=network``, ``aiores:cidr`` and one ``aiores:tag:<name>=1``
per description tag. :meth:`Networks.find` finds them by token, so the core's
cancel cleanup and ``reap()`` release them like instances. :meth:`Networks.destroy`
refuses a network that an instance still uses (pending, running, stopping or
stopped: IncorrectState), waits for instances that are shutting down, then deletes
the parts in the order EC2 requires.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiores import BadParameter, DoesNotExist, IncorrectState, NetworkDescription, ResourceState
from aiores.adaptor import URL, AdaptorEnv, ResourceInfo, concurrency

from ._aws import Api
from ._options import Options

__all__ = ["DESTROY_TIMEOUT", "Networks", "is_network_id"]

#: Seconds a destroy waits for the network's instances that are shutting down.
DESTROY_TIMEOUT = 600.0
_ALIVE = ["pending", "running", "stopping", "stopped"]
_STATES = {"pending": ResourceState.PENDING, "available": ResourceState.ACTIVE}


def is_network_id(native: str) -> bool:
    """Whether an ec2:// native id names a network (a VPC or a subnet)."""
    return native.startswith(("vpc-", "subnet-"))


def _tags(items: Sequence[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or ()}


def _spec(kind: str, tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


class Networks:
    """The network half of an :class:`~aiores_ec2._adaptor.EC2ResourceAdaptor`."""

    def __init__(self, api: Callable[[], Api], env: AdaptorEnv, options: Options, url: URL) -> None:
        self._api = api
        self.env = env
        self.options = options
        self.url = url

    @property
    def api(self) -> Api:
        return self._api()

    # -- records ----------------------------------------------------------------------
    def _info(self, item: Mapping[str, Any], extra: Mapping[str, Any]) -> ResourceInfo:
        tags = _tags(item.get("Tags"))
        native = str(item.get("SubnetId") or item["VpcId"])
        detail = str(item.get("State", "available"))
        return ResourceInfo(
            id=native,
            state=_STATES.get(detail, ResourceState.ACTIVE),
            state_detail=detail,
            rtype="network",
            access=native,
            tags=frozenset(k[len("aiores:tag:") :] for k in tags if k.startswith("aiores:tag:")),
            token=tags.get("aiores:token"),
            extra={
                "cidr": item.get("CidrBlock"),
                "vpc": item.get("VpcId"),
                "isolated": tags.get("aiores:isolated") != "0",
                "mode": "default" if native.startswith("subnet-") else "vpc",
                **extra,
            },
        )

    async def _parts(self, native: str) -> dict[str, Any]:
        """The subnet and group of a network (``extra``), found by its tag."""
        key = {"Name": "tag:aiores:network", "Values": [native]}
        groups = await self.api.call("DescribeSecurityGroups", Filters=[key])
        parts: dict[str, Any] = {
            "security_group": next((g["GroupId"] for g in groups["SecurityGroups"]), None)
        }
        if native.startswith("subnet-"):
            parts["subnet"] = native
        else:
            subnets = await self.api.call(
                "DescribeSubnets", Filters=[{"Name": "vpc-id", "Values": [native]}]
            )
            parts["subnet"] = next((s["SubnetId"] for s in subnets["Subnets"]), None)
        return parts

    async def _described(self, filters: list[dict[str, Any]]) -> list[ResourceInfo]:
        """Networks (VPCs and subnets marked ``aiores:rtype=network``) matching ``filters``."""
        marked = [{"Name": "tag:aiores:rtype", "Values": ["network"]}, *filters]
        vpcs = await self.api.call("DescribeVpcs", Filters=marked)
        subnets = await self.api.call("DescribeSubnets", Filters=marked)
        items = [*vpcs["Vpcs"], *subnets["Subnets"]]
        infos = []
        for item in items:
            native = str(item.get("SubnetId") or item["VpcId"])
            infos.append(self._info(item, await self._parts(native)))
        return infos

    async def describe(self, ids: Sequence[str]) -> dict[str, ResourceInfo]:
        """Each network of ``ids`` that exists."""
        vpcs = [i for i in ids if i.startswith("vpc-")]
        subnets = [i for i in ids if i.startswith("subnet-")]
        found: list[ResourceInfo] = []
        if vpcs:
            found += await self._described([{"Name": "vpc-id", "Values": vpcs}])
        if subnets:
            found += await self._described([{"Name": "subnet-id", "Values": subnets}])
        return {i.id: i for i in found if i.id in ids}

    async def find(self, token: str) -> list[ResourceInfo]:
        """Networks made under ``token`` (the VPC or subnet is tagged at creation)."""
        return await self._described([{"Name": "tag:aiores:token", "Values": [token]}])

    async def tagged(self, tags: frozenset[str]) -> list[ResourceInfo]:
        """Networks aiores made (any session) that carry ``tags``."""
        filters = [{"Name": f"tag:aiores:tag:{t}", "Values": ["1"]} for t in sorted(tags)]
        return await self._described(filters)

    async def placement(self, network: str) -> dict[str, Any]:
        """RunInstances parameters that put instances on ``network``.

        Raises:
            BadParameter: ``network`` is not a network id.
            DoesNotExist: no such network (or it is being deleted).
        """
        if not is_network_id(network):
            raise BadParameter(
                f"ComputeDescription.network {network!r} is not an ec2:// network "
                "(a vpc-... or subnet-... id)"
            )
        info = (await self.describe([network])).get(network)
        if info is None or not info.extra.get("subnet") or not info.extra.get("security_group"):
            raise DoesNotExist(f"{self.url} has no network {network!r}")
        return {
            "SubnetId": info.extra["subnet"],
            "SecurityGroupIds": [info.extra["security_group"]],
        }

    # -- acquire ----------------------------------------------------------------------
    async def acquire(
        self, description: NetworkDescription, base_tags: Mapping[str, str]
    ) -> ResourceInfo:
        """Make one network (see the module docstring).

        Raises:
            BadParameter: a range outside what EC2 allows, overlapping another aiores
                network of the endpoint (or a subnet of the default VPC).
        """
        live = await self._described([{"Name": "tag:aiores:managed", "Values": ["1"]}])
        taken = [ipaddress.IPv4Network(str(i.extra["cidr"])) for i in live if i.extra.get("cidr")]
        default = self.options.network == "default"
        vpc_id: str | None = None
        if default:
            vpc = await self._default_vpc()
            vpc_id = str(vpc["VpcId"])
            answer = await self.api.call(
                "DescribeSubnets", Filters=[{"Name": "vpc-id", "Values": [vpc_id]}]
            )
            taken += [ipaddress.IPv4Network(s["CidrBlock"]) for s in answer["Subnets"]]
        cidr = self._range(description.cidr, taken, vpc if default else None)
        tags = {
            **base_tags,
            "aiores:rtype": "network",
            "aiores:cidr": str(cidr),
            "aiores:isolated": "1" if description.isolated else "0",
        }
        for tag in sorted(description.tags):
            tags["aiores:tag:" + tag] = "1"
        parts = {k: v for k, v in base_tags.items() if k != "Name"}
        if not default:
            made = await self.api.call(
                "CreateVpc", CidrBlock=str(cidr), TagSpecifications=_spec("vpc", tags)
            )
            vpc_id = str(made["Vpc"]["VpcId"])
            parts["aiores:network"] = vpc_id
        assert vpc_id is not None
        subnet = await self.api.call(
            "CreateSubnet",
            VpcId=vpc_id,
            CidrBlock=str(cidr),
            TagSpecifications=_spec("subnet", tags if default else parts),
        )
        subnet_id = str(subnet["Subnet"]["SubnetId"])
        native = subnet_id if default else vpc_id
        parts["aiores:network"] = native
        group = await self.api.call(
            "CreateSecurityGroup",
            GroupName=f"aiores-net-{native}",
            Description=f"aiores network {native}: all traffic within, SSH from what was asked",
            VpcId=vpc_id,
            TagSpecifications=_spec("security-group", parts),
        )
        group_id = str(group["GroupId"])
        await self.api.call(
            "AuthorizeSecurityGroupIngress",
            GroupId=group_id,
            IpPermissions=self.rules(group_id, description.ingress or self.options.ssh_cidr or ()),
        )
        if default and description.isolated:
            await self._route_table(vpc_id, subnet_id, parts, gateway=None)
        elif not default and not description.isolated:
            gateway = await self.api.call(
                "CreateInternetGateway", TagSpecifications=_spec("internet-gateway", parts)
            )
            gateway_id = str(gateway["InternetGateway"]["InternetGatewayId"])
            await self.api.call("AttachInternetGateway", InternetGatewayId=gateway_id, VpcId=vpc_id)
            await self._route_table(vpc_id, subnet_id, parts, gateway=gateway_id)
            await self.api.call(
                "ModifySubnetAttribute", SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True}
            )
        info = (await self.describe([native])).get(native)
        if info is None:
            raise DoesNotExist(f"{self.url}: network {native} vanished while being made")
        return info

    @staticmethod
    def rules(group_id: str, ingress: Sequence[str]) -> list[dict[str, Any]]:
        """The group's ingress rules: all from itself, TCP 22 from ``ingress``."""
        rules: list[dict[str, Any]] = [
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]}
        ]
        v4 = [r for r in ingress if ipaddress.ip_network(r).version == 4]
        v6 = [r for r in ingress if ipaddress.ip_network(r).version == 6]
        if v4 or v6:
            rule: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
            if v4:
                rule["IpRanges"] = [{"CidrIp": r} for r in v4]
            if v6:
                rule["Ipv6Ranges"] = [{"CidrIpv6": r} for r in v6]
            rules.append(rule)
        return rules

    async def _default_vpc(self) -> dict[str, Any]:
        answer = await self.api.call(
            "DescribeVpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]
        )
        if not answer["Vpcs"]:
            raise DoesNotExist(f"{self.url} has no default VPC: use the option network=vpc")
        vpc: dict[str, Any] = answer["Vpcs"][0]
        return vpc

    def _range(
        self,
        cidr: str | None,
        taken: Sequence[ipaddress.IPv4Network],
        vpc: Mapping[str, Any] | None,
    ) -> ipaddress.IPv4Network:
        outer = ipaddress.IPv4Network(vpc["CidrBlock"]) if vpc is not None else None
        if cidr is not None:
            wanted = ipaddress.IPv4Network(cidr)
            if wanted.is_loopback:
                raise BadParameter(
                    f"NetworkDescription.cidr {cidr!r} is loopback: ec2:// networks are "
                    "ranges of 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
                )
            if outer is not None and not wanted.subnet_of(outer):
                raise BadParameter(
                    f"NetworkDescription.cidr {cidr!r} is not inside the default VPC's "
                    f"range {outer} (network=default)"
                )
            for other in taken:
                if wanted.overlaps(other):
                    raise BadParameter(
                        f"NetworkDescription.cidr {cidr!r} overlaps {other}, a network or "
                        f"subnet of {self.url.replace(query=())}: choose another range"
                    )
            return wanted
        pool = outer.subnets(new_prefix=24) if outer is not None else _ten_slash_16()
        for candidate in pool:
            if not any(candidate.overlaps(other) for other in taken):
                return candidate
        raise IncorrectState(f"{self.url}: no free range left for a network")

    async def _route_table(
        self, vpc_id: str, subnet_id: str, parts: Mapping[str, str], *, gateway: str | None
    ) -> None:
        table = await self.api.call(
            "CreateRouteTable", VpcId=vpc_id, TagSpecifications=_spec("route-table", parts)
        )
        table_id = str(table["RouteTable"]["RouteTableId"])
        if gateway is not None:
            await self.api.call(
                "CreateRoute",
                RouteTableId=table_id,
                DestinationCidrBlock="0.0.0.0/0",
                GatewayId=gateway,
            )
        await self.api.call("AssociateRouteTable", RouteTableId=table_id, SubnetId=subnet_id)

    # -- destroy ----------------------------------------------------------------------
    async def destroy(self, ids: Sequence[str]) -> None:
        """Delete the networks (already gone: not an error).

        Raises:
            IncorrectState: an instance that is not ending uses one (it is kept).
            Timeout: instances of one were still shutting down after
                :data:`DESTROY_TIMEOUT` seconds.
        """
        for native in ids:
            await self._destroy_one(native)

    async def _users(self, native: str) -> list[dict[str, Any]]:
        key = "subnet-id" if native.startswith("subnet-") else "vpc-id"
        answer = await self.api.call(
            "DescribeInstances",
            Filters=[
                {"Name": key, "Values": [native]},
                {"Name": "instance-state-name", "Values": [*_ALIVE, "shutting-down"]},
            ],
        )
        return [i for r in answer["Reservations"] for i in r["Instances"]]

    async def _destroy_one(self, native: str) -> None:
        users = await self._users(native)
        running = sorted(i["InstanceId"] for i in users if i["State"]["Name"] in _ALIVE)
        if running:
            raise IncorrectState(
                f"network {native} is still used by {len(running)} instance(s) "
                f"({', '.join(running[:10])}): destroy them first"
            )
        delay = 0.5
        async with concurrency.fail_after(
            DESTROY_TIMEOUT, f"instances of network {native} did not end in time"
        ):
            while await self._users(native):
                await self.env.clock.sleep(delay)
                delay = min(delay * 2, 5.0)
        mine = [{"Name": "tag:aiores:network", "Values": [native]}]
        tables = await self.api.call("DescribeRouteTables", Filters=mine)
        for table in tables["RouteTables"]:
            for assoc in table.get("Associations", []):
                if not assoc.get("Main") and assoc.get("RouteTableAssociationId"):
                    await self._gone_ok(
                        "DisassociateRouteTable", AssociationId=assoc["RouteTableAssociationId"]
                    )
            await self._gone_ok("DeleteRouteTable", RouteTableId=table["RouteTableId"])
        groups = await self.api.call("DescribeSecurityGroups", Filters=mine)
        for group in groups["SecurityGroups"]:
            await self._gone_ok("DeleteSecurityGroup", GroupId=group["GroupId"])
        if native.startswith("subnet-"):
            await self._gone_ok("DeleteSubnet", SubnetId=native)
            return
        # Attached, or made by an acquire cut off before it attached it.
        gateways: dict[str, Mapping[str, Any]] = {}
        for key in (
            {"Name": "attachment.vpc-id", "Values": [native]},
            {"Name": "tag:aiores:network", "Values": [native]},
        ):
            answer = await self.api.call("DescribeInternetGateways", Filters=[key])
            gateways.update((g["InternetGatewayId"], g) for g in answer["InternetGateways"])
        for gateway_id, gateway in gateways.items():
            if any(a.get("VpcId") == native for a in gateway.get("Attachments", [])):
                await self._gone_ok(
                    "DetachInternetGateway", InternetGatewayId=gateway_id, VpcId=native
                )
            await self._gone_ok("DeleteInternetGateway", InternetGatewayId=gateway_id)
        subnets = await self.api.call(
            "DescribeSubnets", Filters=[{"Name": "vpc-id", "Values": [native]}]
        )
        for subnet in subnets["Subnets"]:
            await self._gone_ok("DeleteSubnet", SubnetId=subnet["SubnetId"])
        await self._gone_ok("DeleteVpc", VpcId=native)

    async def _gone_ok(self, action: str, **params: Any) -> None:
        with contextlib.suppress(DoesNotExist):  # already deleted
            await self.api.call(action, **params)


def _ten_slash_16() -> list[ipaddress.IPv4Network]:
    return list(ipaddress.IPv4Network("10.0.0.0/8").subnets(new_prefix=16))
