"""First use of an EC2 region: the key pair and the security group, made once, remembered.

What is made (see :mod:`aiores_ec2._setup` for the why): the aiores-managed key pair
``aiores-<fingerprint>`` and the ``aiores`` security group of the default VPC (or of
the ``subnet`` option's VPC) admitting TCP 22 from ``ssh_cidr``. Found or made on the
first acquire, then remembered in ``<state dir>/ec2/setup.json`` per endpoint, region,
credentials and options, so later sessions make no set-up calls at all. If a launch
is refused because a remembered key pair or group is gone, it is forgotten, found or
made again, and the launch tried once more.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
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
from ._setup import MANAGED_KEY, key_pair_name, managed_key

__all__ = ["STALE_CODES", "FirstUse", "Setup"]

SSH_PORT = 22
#: Launch errors that mean a remembered key pair or group is gone.
STALE_CODES = frozenset(
    {"InvalidKeyPair.NotFound", "InvalidGroup.NotFound", "InvalidGroupId.NotFound"}
)
CACHE = Path("ec2", "setup.json")


@dataclass(frozen=True, slots=True)
class Setup:
    """The key pair and security group instances launch with."""

    key_name: str
    group_id: str


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
        if isinstance(entry, dict) and {"key_name", "group_id"} <= set(entry):
            self._setup = Setup(str(entry["key_name"]), str(entry["group_id"]))
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
                group_id = await self._security_group()
                self._setup = Setup(key_name, group_id)
                self.remembered = False
                key = self._cache_key(self._api().target)
                await asyncio.to_thread(
                    _write_cache, self._state_dir, key, {"key_name": key_name, "group_id": group_id}
                )
            return self._setup

    async def forget(self, stale: Setup) -> None:
        """Drop a remembered set-up that EC2 no longer knows (the next ensure redoes it)."""
        async with self._lock:
            if self._setup == stale:
                self._setup = None
                self.remembered = False
                key = self._cache_key(self._api().target)
                await asyncio.to_thread(_write_cache, self._state_dir, key, None)

    def _managed_tags(self, kind: str) -> list[dict[str, Any]]:
        return [{"ResourceType": kind, "Tags": [{"Key": "aiores:managed", "Value": "1"}]}]

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

    async def _security_group(self) -> str:
        named = self._options.security_group
        if named and named.startswith("sg-"):
            return named
        if named:
            found = await self._api().call(
                "DescribeSecurityGroups", Filters=[{"Name": "group-name", "Values": [named]}]
            )
            if not found.get("SecurityGroups"):
                raise DoesNotExist(f"{self._url}: no security group named {named!r}")
            return str(found["SecurityGroups"][0]["GroupId"])
        vpc_id, vpc_range = await self._vpc()
        group = await self._aiores_group(vpc_id)
        wanted = set(self._options.ssh_cidr or (vpc_range,))
        have: set[str] = set()
        for perm in group.get("IpPermissions", []):
            if perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == SSH_PORT:
                have.update(r["CidrIp"] for r in perm.get("IpRanges", []))
                have.update(r["CidrIpv6"] for r in perm.get("Ipv6Ranges", []))
        missing = sorted(wanted - have)
        if missing:
            v4 = [{"CidrIp": c, "Description": "aiores ssh"} for c in missing if ":" not in c]
            v6 = [{"CidrIpv6": c, "Description": "aiores ssh"} for c in missing if ":" in c]
            permission = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
            if v4:
                permission["IpRanges"] = v4
            if v6:
                permission["Ipv6Ranges"] = v6
            try:
                await self._api().call(
                    "AuthorizeSecurityGroupIngress",
                    GroupId=group["GroupId"],
                    IpPermissions=[permission],
                )
            except AioresError as exc:
                if error_code(exc.__cause__ or exc) != "InvalidPermission.Duplicate":
                    raise
        return str(group["GroupId"])

    async def _aiores_group(self, vpc_id: str) -> dict[str, Any]:
        filters = [
            {"Name": "group-name", "Values": ["aiores"]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
        found = await self._api().call("DescribeSecurityGroups", Filters=filters)
        if found.get("SecurityGroups"):
            return dict(found["SecurityGroups"][0])
        try:
            await self._api().call(
                "CreateSecurityGroup",
                GroupName="aiores",
                Description="aiores: SSH from the address ranges aiores was told",
                VpcId=vpc_id,
                TagSpecifications=self._managed_tags("security-group"),
            )
        except AioresError as exc:
            if error_code(exc.__cause__ or exc) != "InvalidGroup.Duplicate":
                raise
        found = await self._api().call("DescribeSecurityGroups", Filters=filters)
        if not found.get("SecurityGroups"):
            raise NoSuccess(f"{self._url}: the security group 'aiores' vanished once made")
        return dict(found["SecurityGroups"][0])


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
