"""Networks of the simulated cloud: private address ranges inside ``127.0.0.0/8``.

A network is a range such as ``127.42.0.0/24`` held by the cloud's first process.
Each VM acquired on it gets an address of its own in the range, and its SSH server
listens there alone (on port 22 when the cloud runs as root and the port is free at
that address, else on a port of its own), so the VM's ``private_address`` is where
the other VMs of the network reach it: they all run on this host, and Linux routes
the whole of ``127.0.0.0/8`` over loopback without any set-up. Commands on a VM find
its address in ``AIORES_SIM_ADDRESS`` (to bind a server there). VMs on no network
keep listening on ``127.0.0.1``.

Everything is on one host, so a network isolates nothing: ``isolated`` and
``ingress`` are recorded (``extra``) but not enforced. Ranges are checked as a
cloud's would be: one that overlaps a live network of the cloud, or that holds
``127.0.0.1`` (where VMs on no network listen), is refused (BadParameter); a
network still used by a VM that has not ended cannot be destroyed (IncorrectState).

Ops (see :mod:`aiores_sim._protocol`): ``network_acquire``, ``network_find``,
``network_describe``, ``network_list``, ``network_destroy``; a network's changes are
events like a VM's (its record has ``"rtype": "network"``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiores import BadParameter, DoesNotExist, IncorrectState, NetworkDescription
from aiores import ResourceState as S
from aiores.adaptor import validate

from ._protocol import encode

if TYPE_CHECKING:
    from ._vm import VM

__all__ = [
    "DEFAULT_BLOCK",
    "LOOPBACK",
    "NetworkOps",
    "SimNetwork",
    "is_network_id",
    "network_args",
    "sim_range",
]

#: Where VMs on no network listen.
LOOPBACK = "127.0.0.1"
#: Where ranges chosen for networks that name none start (then the next /24 up).
DEFAULT_BLOCK = ipaddress.IPv4Network("127.42.0.0/24")
_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
_PREFIX = "net-"


def is_network_id(native: str) -> bool:
    """Whether a native id of the sim cloud names a network (not a VM)."""
    return native.startswith(_PREFIX)


def sim_range(cidr: str, field: str = "NetworkDescription.cidr") -> ipaddress.IPv4Network:
    """A range a sim network may have: inside ``127.0.0.0/8``, without ``127.0.0.1``.

    Raises:
        BadParameter: a range elsewhere, or one that holds 127.0.0.1.
    """
    net = ipaddress.IPv4Network(validate.address_range(cidr, field))
    if not net.subnet_of(_LOOPBACK_NET):
        raise BadParameter(
            f"{field} {cidr!r}: sim:// networks are ranges of 127.0.0.0/8 "
            "(such as 127.42.0.0/24): the simulated VMs all run on this host"
        )
    if ipaddress.IPv4Address(LOOPBACK) in net:
        raise BadParameter(
            f"{field} {cidr!r} holds {LOOPBACK}, where VMs on no network listen: "
            "choose a range such as 127.42.0.0/24"
        )
    return net


def network_args(description: NetworkDescription, token: str) -> dict[str, Any]:
    """The ``network_acquire`` request of a description (client side)."""
    if description.cidr is not None:
        sim_range(description.cidr)
    return {
        "cidr": description.cidr,
        "tags": sorted(description.tags),
        "token": token,
        "isolated": description.isolated,
        "ingress": list(description.ingress),
    }


@dataclass(eq=False)
class SimNetwork:
    """A network the cloud holds."""

    id: str
    cidr: ipaddress.IPv4Network
    token: str
    tags: frozenset[str]
    isolated: bool
    ingress: tuple[str, ...]
    state: S = S.ACTIVE
    detail: str = "available"
    created: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rtype": "network",
            "state": self.state.name,
            "detail": self.detail,
            "access": self.id,
            "tags": sorted(self.tags),
            "token": self.token,
            "extra": {
                "cidr": str(self.cidr),
                "isolated": self.isolated,
                "ingress": list(self.ingress),
                "created": self.created,
            },
        }


class NetworkOps:
    """The network side of a :class:`~aiores_sim._cloud.Cloud` (a mixin of it).

    Its VMs are in ``vms`` (and, in a cloud with regions, in its regions' records);
    acquires under way are in ``_acquiring``; ``_subscribers`` hear of changes.
    """

    vms: dict[str, VM]
    _acquiring: dict[str, asyncio.Event]
    _subscribers: set[asyncio.StreamWriter]

    def _networks(self) -> dict[str, SimNetwork]:
        nets: dict[str, SimNetwork] | None = self.__dict__.get("_sim_networks")
        if nets is None:
            nets = self.__dict__["_sim_networks"] = {}
        return nets

    def _placing(self) -> dict[str, tuple[str, list[str]]]:
        """Addresses promised to acquires under way: token -> (network, addresses)."""
        placing: dict[str, tuple[str, list[str]]] | None = self.__dict__.get("_sim_placing")
        if placing is None:
            placing = self.__dict__["_sim_placing"] = {}
        return placing

    def _announce_network(self, net: SimNetwork) -> None:
        self._broadcast(encode({"event": "vm", "vm": net.to_json()}))

    def _broadcast(self, line: bytes) -> None:
        """Send an event line to every subscriber still connected."""
        for writer in list(self._subscribers):
            if writer.is_closing():
                self._subscribers.discard(writer)
            else:
                writer.write(line)

    # -- members ----------------------------------------------------------------------
    def _member_records(self) -> Iterator[tuple[str, str | None, str | None, str]]:
        """(VM id, network, address, state name) of every VM this cloud knows."""
        for vm in self.vms.values():
            yield vm.id, vm.spec.network, vm.spec.address, vm.state.name
        for region in getattr(self, "regions", ()):
            for vm_id, record in region.records.items():
                extra = record.get("extra") or {}
                yield vm_id, extra.get("network"), record.get("address"), record.get("state", "")

    def _members(self, net_id: str) -> list[tuple[str, str | None, str]]:
        """(VM id, address, state) of the VMs on ``net_id`` that have not ended."""
        return [
            (vm_id, address, state)
            for vm_id, network, address, state in self._member_records()
            if network == net_id and state in ("NEW", "PENDING", "ACTIVE")
        ]

    def _place(self, args: Mapping[str, Any], count: int) -> Mapping[str, Any]:
        """An acquire's request with an address for each VM of its network (if it has
        one), promised to it until its VMs are made.

        Raises:
            DoesNotExist: no such network.
            IncorrectState: the network has ended, or has fewer free addresses than
                ``count``.
        """
        net_id = args.get("network")
        if net_id is None:
            return args
        net = self._networks().get(str(net_id))
        if net is None:
            if "addresses" in args:  # a region's share: the first process placed them
                return args
            raise DoesNotExist(f"the sim cloud has no network {net_id!r}")
        if net.state.final:
            raise IncorrectState(f"network {net.id} is {net.state.name}: it was destroyed")
        placing = self._placing()
        for token in [t for t in placing if t not in self._acquiring]:
            del placing[token]
        used = {address for _, address, _ in self._members(net.id)}
        used.update(a for n, addrs in placing.values() if n == net.id for a in addrs)
        free: list[str] = []
        for host in net.cidr.hosts():
            if len(free) == count:
                break
            if str(host) not in used:
                free.append(str(host))
        if len(free) < count:
            raise IncorrectState(
                f"network {net.id} ({net.cidr}) has {len(free)} free addresses, "
                f"not {count}: use a larger range"
            )
        placing[str(args.get("token") or "")] = (net.id, free)
        return {**args, "addresses": free}

    # -- ops --------------------------------------------------------------------------
    async def op_network_acquire(self, args: Mapping[str, Any]) -> Any:
        nets = self._networks()
        live = [n for n in nets.values() if not n.state.final]
        cidr = args.get("cidr")
        if cidr is not None:
            wanted = sim_range(str(cidr))
            for other in live:
                if wanted.overlaps(other.cidr):
                    raise BadParameter(
                        f"NetworkDescription.cidr {cidr!r} overlaps network {other.id} "
                        f"({other.cidr}) of the sim cloud: choose another range"
                    )
        else:
            wanted = _free_range(live)
        tags = args.get("tags", [])
        ingress = args.get("ingress", [])
        if not isinstance(tags, list) or not isinstance(ingress, list):
            raise BadParameter("tags and ingress must be lists")
        net_id = _PREFIX + secrets.token_hex(5)
        while net_id in nets:
            net_id = _PREFIX + secrets.token_hex(5)
        net = SimNetwork(
            id=net_id,
            cidr=wanted,
            token=str(args.get("token") or ""),
            tags=frozenset(str(t) for t in tags),
            isolated=bool(args.get("isolated", True)),
            ingress=tuple(str(r) for r in ingress),
        )
        nets[net.id] = net
        self._announce_network(net)
        return net.to_json()

    async def op_network_find(self, args: Mapping[str, Any]) -> Any:
        token = str(args.get("token"))
        return [
            n.to_json() for n in self._networks().values() if n.token == token and not n.state.final
        ]

    async def op_network_describe(self, args: Mapping[str, Any]) -> Any:
        ids = _ids(args)
        nets = self._networks()
        return {i: nets[i].to_json() for i in ids if i in nets}

    async def op_network_list(self, args: Mapping[str, Any]) -> Any:
        tags = set(_ids(args, "tags"))
        return [
            n.to_json() for n in self._networks().values() if not n.state.final and tags <= n.tags
        ]

    async def op_network_destroy(self, args: Mapping[str, Any]) -> Any:
        """Delete networks no VM uses; VMs of theirs that ended are waited for (torn down).

        Raises:
            IncorrectState: a VM that has not ended uses one (none is deleted then).
        """
        nets = self._networks()
        doomed = [nets[i] for i in _ids(args) if i in nets and not nets[i].state.final]
        for net in doomed:
            members = self._members(net.id)
            if members:
                names = ", ".join(sorted(m[0] for m in members)[:10])
                raise IncorrectState(
                    f"network {net.id} is still used by {len(members)} VM(s) ({names}): "
                    "destroy them first"
                )
        waits = [
            vm.gone.wait()
            for vm in self.vms.values()
            if vm.spec.network in {n.id for n in doomed} and not vm.gone.is_set()
        ]
        if waits:
            await asyncio.gather(*waits)
        for net in doomed:
            if not net.state.final:
                net.state, net.detail = S.CANCELED, "deleted"
                self._announce_network(net)
        return None


def _free_range(live: Sequence[SimNetwork]) -> ipaddress.IPv4Network:
    """The first /24 from 127.42.0.0 on that overlaps no live network."""
    start = int(DEFAULT_BLOCK.network_address)
    end = int(ipaddress.IPv4Address("127.255.255.0"))
    for base in range(start, end + 1, 256):
        candidate = ipaddress.IPv4Network((base, 24))
        if not any(candidate.overlaps(n.cidr) for n in live):
            return candidate
    raise IncorrectState("the sim cloud has no free /24 left in 127.42.0.0 - 127.255.255.0")


def _ids(args: Mapping[str, Any], name: str = "ids") -> list[str]:
    value = args.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadParameter(f"{name} must be a list of str")
    return value
