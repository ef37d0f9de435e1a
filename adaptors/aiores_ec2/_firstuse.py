"""First use of an EC2 region: the key pair and the security group, made once, remembered.

What is made (see :mod:`aiores_ec2._setup` for the why): the aiores-managed key pair
``aiores-<fingerprint>`` and the security group ``aiores-ssh-<hash>`` of the default
VPC (or of the ``subnet`` option's VPC) admitting TCP 22 from exactly the
``ssh_cidr`` ranges, one group per set of ranges. Found or made on the first acquire
(a found group's other ingress rules revoked), then remembered in
``<state dir>/ec2/setup.json`` per endpoint, region, credentials and options, so
later sessions make no set-up calls at all. If a launch is refused because a
remembered key pair or group is gone, it is forgotten, found or made again, and the
launch tried once more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiores import AioresError, DoesNotExist, NoSuccess
from aiores.adaptor import URL

from ._aws import Api, Target, error_code
from ._hostkeys import write_private
from ._options import Options
from ._setup import MANAGED_KEY, key_pair_name, managed_key, ssh_group_name, ssh_ranges

__all__ = ["STALE_CODES", "FirstUse", "Setup"]

SSH_PORT = 22
#: Launch errors that mean a remembered key pair or group is gone.
STALE_CODES = frozenset(
    {"InvalidKeyPair.NotFound", "InvalidGroup.NotFound", "InvalidGroupId.NotFound"}
)
CACHE = Path("ec2", "setup.json")
#: EC2's longest security group description and tag value.
MAX_DESCRIPTION = 255
MAX_TAG_VALUE = 256

logger = logging.getLogger("aiores.ec2")


@dataclass(frozen=True, slots=True)
class Setup:
    """The key pair and security group instances launch with."""

    key_name: str
    group_id: str
    #: The group's name (``aiores-ssh-<hash>``), or the ``security_group`` option.
    group_name: str


class FirstUse:
    """Finds or makes the key pair and security group of one endpoint (see above)."""

    def __init__(self, api: Callable[[], Api], options: Options, state_dir: Path, url: URL) -> None:
        self._api = api
        self._options = options
        self._state_dir = state_dir
        self._url = url
        self._lock = asyncio.Lock()
        self._setup: Setup | None = None
        #: (key pair name, private key file) of the managed key, once known.
        self.managed: tuple[str, str] | None = None
        #: True if the set-up in use was read from the cache (not checked this session).
        self.remembered = False

    def _cache_key(self, t: Target) -> str:
        who = t.access_key_id or t.profile or os.environ.get("AWS_PROFILE", "default chain")
        facts = [
            t.endpoint_url or "aws",
            t.region or "",
            who,
            self._options.key_name or "",
            self._options.security_group or "",
            self._options.subnet or "",
            ",".join(sorted(self._options.ssh_cidr or ())),
            self.managed[0] if self.managed else "",
        ]
        return hashlib.sha256("|".join(facts).encode()).hexdigest()[:24]

    async def load(self) -> None:
        """Read what earlier sessions found (and the managed key's name, if it exists)."""
        self.managed = await asyncio.to_thread(self._existing_managed_key)
        if self._options.key_name is None and self.managed is None:
            return  # the key is made on first use: nothing remembered can be right
        key = self._cache_key(self._api().target)
        entry = (await asyncio.to_thread(_read_cache, self._state_dir)).get(key)
        # An entry without the group's name names the one group all ranges once
        # shared (``aiores``): not used, the group of this rule is found or made.
        if isinstance(entry, dict) and {"key_name", "group_id", "group_name"} <= set(entry):
            self._setup = Setup(
                str(entry["key_name"]), str(entry["group_id"]), str(entry["group_name"])
            )
            self.remembered = True

    def _existing_managed_key(self) -> tuple[str, str] | None:
        path = self._state_dir / MANAGED_KEY
        if not path.exists():
            return None
        file, public = managed_key(self._state_dir)
        return key_pair_name(public), str(file)

    async def ensure(self) -> Setup:
        """The set-up, found or made on first use (concurrent callers share one).

        Raises:
            AioresError: EC2 refused a set-up call (permission, no default VPC...).
        """
        async with self._lock:
            if self._setup is None:
                key_name = await self._key_pair()
                group_id, group_name = await self._security_group()
                self._setup = Setup(key_name, group_id, group_name)
                self.remembered = False
                key = self._cache_key(self._api().target)
                entry = {"key_name": key_name, "group_id": group_id, "group_name": group_name}
                await asyncio.to_thread(_write_cache, self._state_dir, key, entry)
            return self._setup

    async def forget(self, stale: Setup) -> None:
        """Drop a remembered set-up that EC2 no longer knows (the next ensure redoes it)."""
        async with self._lock:
            if self._setup == stale:
                self._setup = None
                self.remembered = False
                key = self._cache_key(self._api().target)
                await asyncio.to_thread(_write_cache, self._state_dir, key, None)

    def _managed_tags(self, kind: str, **more: str) -> list[dict[str, Any]]:
        tags = [{"Key": "aiores:managed", "Value": "1"}]
        tags += [{"Key": k, "Value": v} for k, v in more.items()]
        return [{"ResourceType": kind, "Tags": tags}]

    async def _key_pair(self) -> str:
        if self._options.key_name:
            return self._options.key_name
        path, public = await asyncio.to_thread(managed_key, self._state_dir)
        name = key_pair_name(public)
        self.managed = (name, str(path))
        try:
            await self._api().call("DescribeKeyPairs", KeyNames=[name])
            return name
        except DoesNotExist:
            pass
        try:
            await self._api().call(
                "ImportKeyPair",
                KeyName=name,
                PublicKeyMaterial=public.encode(),
                TagSpecifications=self._managed_tags("key-pair"),
            )
        except AioresError as exc:
            if error_code(exc.__cause__ or exc) != "InvalidKeyPair.Duplicate":
                raise
        return name

    async def _vpc(self) -> tuple[str, str]:
        """(VPC id, its address range): the subnet's VPC, else the default VPC."""
        if self._options.subnet:
            subnets = await self._api().call("DescribeSubnets", SubnetIds=[self._options.subnet])
            vpc_id = subnets["Subnets"][0]["VpcId"]
            vpcs = await self._api().call("DescribeVpcs", VpcIds=[vpc_id])
        else:
            vpcs = await self._api().call(
                "DescribeVpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]
            )
        if not vpcs.get("Vpcs"):
            raise NoSuccess(
                f"{self._url}: the region has no default VPC; set the subnet or "
                "security_group option"
            )
        vpc = vpcs["Vpcs"][0]
        return str(vpc["VpcId"]), str(vpc["CidrBlock"])

    async def _security_group(self) -> tuple[str, str]:
        """(id, name) of the group to launch in: the option's, else aiores's for the rule."""
        named = self._options.security_group
        if named and named.startswith("sg-"):
            return named, named
        if named:
            found = await self._api().call(
                "DescribeSecurityGroups", Filters=[{"Name": "group-name", "Values": [named]}]
            )
            if not found.get("SecurityGroups"):
                raise DoesNotExist(f"{self._url}: no security group named {named!r}")
            return str(found["SecurityGroups"][0]["GroupId"]), named
        vpc_id, vpc_range = await self._vpc()
        wanted = ssh_ranges(self._options.ssh_cidr or (vpc_range,))
        name = ssh_group_name(wanted)
        group = await self._aiores_group(vpc_id, name, wanted)
        group_id = str(group["GroupId"])
        missing, extra = _compare(group.get("IpPermissions", []), wanted)
        if extra:
            # The name promises exactly this rule: whatever else was added goes.
            logger.warning(
                "%s: revoking ingress rules the security group %s (%s) should not have: %s",
                self._url,
                name,
                group_id,
                extra,
            )
            try:
                await self._api().call(
                    "RevokeSecurityGroupIngress", GroupId=group_id, IpPermissions=extra
                )
            except AioresError as exc:
                if error_code(exc.__cause__ or exc) != "InvalidPermission.NotFound":
                    raise
        if missing:
            try:
                await self._api().call(
                    "AuthorizeSecurityGroupIngress",
                    GroupId=group_id,
                    IpPermissions=[_ssh_permission(missing)],
                )
            except AioresError as exc:
                if error_code(exc.__cause__ or exc) != "InvalidPermission.Duplicate":
                    raise
        return group_id, name

    async def _aiores_group(
        self, vpc_id: str, name: str, ranges: tuple[str, ...]
    ) -> dict[str, Any]:
        """The group ``name`` of the VPC, made (with no rules yet) if missing."""
        filters = [
            {"Name": "group-name", "Values": [name]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
        found = await self._api().call("DescribeSecurityGroups", Filters=filters)
        if found.get("SecurityGroups"):
            return dict(found["SecurityGroups"][0])
        listed = ",".join(ranges)
        description = f"aiores: SSH (TCP 22) from {listed} only"
        if len(description) > MAX_DESCRIPTION:
            description = "aiores: SSH (TCP 22) only, from the ranges of its rule"
        more = {"aiores:ssh_cidr": listed} if len(listed) <= MAX_TAG_VALUE else {}
        try:
            await self._api().call(
                "CreateSecurityGroup",
                GroupName=name,
                Description=description,
                VpcId=vpc_id,
                TagSpecifications=self._managed_tags("security-group", **more),
            )
        except AioresError as exc:
            if error_code(exc.__cause__ or exc) != "InvalidGroup.Duplicate":
                raise
        found = await self._api().call("DescribeSecurityGroups", Filters=filters)
        if not found.get("SecurityGroups"):
            raise NoSuccess(f"{self._url}: the security group {name!r} vanished once made")
        return dict(found["SecurityGroups"][0])


def _is_ssh(perm: dict[str, Any]) -> bool:
    return (
        perm.get("IpProtocol") == "tcp"
        and perm.get("FromPort") == SSH_PORT
        and perm.get("ToPort") == SSH_PORT
    )


def _compare(
    permissions: list[dict[str, Any]], wanted: tuple[str, ...]
) -> tuple[list[str], list[dict[str, Any]]]:
    """(ranges of ``wanted`` the group lacks, the group's permissions beyond ``wanted``).

    The second is in the shape RevokeSecurityGroupIngress takes: every rule that is
    not TCP 22 from a wanted range (other ports and protocols, other ranges, other
    groups, prefix lists).
    """
    have: set[str] = set()
    extra: list[dict[str, Any]] = []
    for perm in permissions:
        if not _is_ssh(perm):
            extra.append({k: v for k, v in perm.items() if v not in (None, [])})
            continue
        beyond: dict[str, Any] = {}
        for field, cidr in (("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6")):
            others = []
            for entry in perm.get(field, []):
                (canonical,) = ssh_ranges([entry[cidr]])
                if canonical in wanted:
                    have.add(canonical)
                else:
                    others.append({cidr: entry[cidr]})  # revoked as EC2 spells it
            if others:
                beyond[field] = others
        for field in ("UserIdGroupPairs", "PrefixListIds"):
            if perm.get(field):
                beyond[field] = perm[field]
        if beyond:
            extra.append({"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT, **beyond})
    return [c for c in wanted if c not in have], extra


def _ssh_permission(ranges: list[str]) -> dict[str, Any]:
    """The AuthorizeSecurityGroupIngress permission for TCP 22 from ``ranges``."""
    permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
    v4 = [{"CidrIp": c, "Description": "aiores ssh"} for c in ranges if ":" not in c]
    v6 = [{"CidrIpv6": c, "Description": "aiores ssh"} for c in ranges if ":" in c]
    if v4:
        permission["IpRanges"] = v4
    if v6:
        permission["Ipv6Ranges"] = v6
    return permission


def _read_cache(state_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((state_dir / CACHE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(state_dir: Path, key: str, entry: dict[str, str] | None) -> None:
    """Blocking: set (or drop) one entry, replacing the file atomically (0600)."""
    path = state_dir / CACHE
    data = _read_cache(state_dir)
    if entry is None:
        data.pop(key, None)
    else:
        data[key] = entry
    write_private(path, json.dumps(data, indent=1, sort_keys=True))
