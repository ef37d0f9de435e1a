"""sim:// networks: private ranges of 127.0.0.0/8 whose machines reach each other."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

import aiores
from aiores import (
    Compute,
    ComputeDescription,
    Network,
    NetworkDescription,
    ResourceState,
)
from aiores_sim.testing import start_sim_cloud

from .conftest import STEP

URL = "sim://?boot_delay=0.05"
CHILD = Path(__file__).with_name("network_child.py")

#: Listens at the VM's own address (a port of the system's choice, written to
#: ``port``) and tells each caller which VM answered.
SERVER = """
import os, socket
s = socket.socket()
s.bind((os.environ["AIORES_SIM_ADDRESS"], 0))
s.listen(16)
with open("port.tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename("port.tmp", "port")
while True:
    c, _ = s.accept()
    c.sendall(("hello from " + os.environ["HOSTNAME"] + "\\n").encode())
    c.close()
"""
#: Connects to each ``host:port`` argument and prints what answered.
CLIENT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as c:
        print(host, c.makefile().readline().strip())
"""


def _python(code: str, *args: str) -> str:
    return shlex.join([sys.executable, "-c", code, *args])


async def _start_servers(vms: list[Compute]) -> dict[str, int]:
    """An echo server on each VM's private address; its port by the VM's address."""
    ports: dict[str, int] = {}
    for vm in vms:
        started = await vm.run(f"nohup {_python(SERVER)} >/dev/null 2>&1 & exit 0")
        assert started.exit_status == 0, started
        port = (
            await vm.run("while [ ! -s port ]; do sleep 0.05; done; cat port", timeout=STEP)
        ).stdout.strip()
        assert vm.private_address is not None
        ports[vm.private_address] = int(port)
    return ports


def _listening_at(port: int) -> set[str]:
    """The addresses where the session's sim cloud listens on ``port``."""
    pid = int((Path(os.environ["AIORES_SIM_DIR"]) / "cloud.pid").read_text())
    return {
        str(laddr.ip)
        for conn in psutil.net_connections(kind="tcp")
        if (laddr := cast(Any, conn.laddr))
        and conn.status == psutil.CONN_LISTEN
        and conn.pid == pid
        and laddr.port == port
    }


async def _on_a_network(
    mgr: aiores.Manager, cidr: str, count: int
) -> tuple[Network, list[Compute]]:
    """A network of ``cidr`` and ``count`` machines on it, ACTIVE (SSH answers)."""
    net = await mgr.acquire(NetworkDescription(cidr=cidr))
    vms = await mgr.acquire_many(ComputeDescription(network=net), count)
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    return net, vms


def _not_from(vm_id: str, address: str, port: int) -> bool:
    """Nothing of VM ``vm_id`` answers at ``address:port``: refused, or the port is
    another program's (the host's other sim VMs listen on 127.0.0.1 at random ports)."""
    try:
        with socket.create_connection((address, port), timeout=5) as conn:
            conn.settimeout(2)
            said = conn.recv(256)
    except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
        return True
    return vm_id.encode() not in said


@pytest.mark.asyncio
async def test_network_lifecycle_ranges_and_listing() -> None:
    async with aiores.Session() as session:
        mgr = session.manager(URL)
        net = await mgr.acquire(NetworkDescription(cidr="127.43.7.0/24", tags={"lab"}))
        assert isinstance(net, Network)
        assert net.rtype == "network"
        assert net.state is ResourceState.ACTIVE
        assert await net.wait(ResourceState.ACTIVE, timeout=STEP) is ResourceState.ACTIVE
        assert net.cidr == "127.43.7.0/24"
        assert net.access == net.native_id
        assert net.native_id.startswith("net-")
        assert net.tags == {"lab"}
        assert net.extra["isolated"] is True
        chosen = await mgr.acquire(NetworkDescription())  # a free /24 chosen by the cloud
        assert chosen.cidr is not None
        assert ipaddress.IPv4Network(chosen.cidr).subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
        assert not ipaddress.ip_network(chosen.cidr).overlaps(ipaddress.ip_network(net.cidr))
        listed = await mgr.list(rtype="network", tags={"lab"})
        assert [n.id for n in listed] == [net.id]
        assert all(r.rtype == "compute" for r in await mgr.list(rtype="compute"))
        with pytest.raises(aiores.BadParameter, match=f"overlaps network {net.native_id}"):
            await mgr.acquire(NetworkDescription(cidr="127.43.7.0/25"))
        with pytest.raises(aiores.BadParameter, match=r"127\.0\.0\.0/8"):
            await mgr.acquire(NetworkDescription(cidr="10.9.0.0/24"))
        with pytest.raises(aiores.BadParameter, match=r"holds 127\.0\.0\.1"):
            await mgr.acquire(NetworkDescription(cidr="127.0.0.0/24"))
        await mgr.destroy([net, chosen])
        assert net.state is chosen.state is ResourceState.CANCELED
        await net.destroy()  # twice is not an error
        # Its range is free again; another session finds the ended record by id.
        again = await mgr.acquire(NetworkDescription(cidr="127.43.7.0/24"))
        await again.destroy()
    async with aiores.Session() as other:
        found = await other.manager("sim://").get(net.id)
        assert isinstance(found, Network)
        assert found.state is ResourceState.CANCELED
        assert isinstance(found.description, NetworkDescription)
        assert found.description.cidr == "127.43.7.0/24"


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.0.0.0/8", "is /8"),
        ("10.0.0.0/29", "is /29"),
        ("8.8.8.0/24", "not private"),
        ("10.0.0.9/24", "host bits set; write 10.0.0.0/24"),
        ("fd00::/64", "IPv4"),
        ("nonsense", "an address range"),
    ],
)
def test_bad_ranges_are_refused_naming_the_field(cidr: str, message: str) -> None:
    with pytest.raises(aiores.BadParameter, match=r"NetworkDescription\.cidr") as caught:
        NetworkDescription(cidr=cidr)
    assert message in str(caught.value)
    with pytest.raises(aiores.BadParameter, match=r"NetworkDescription\.ingress\[1\]"):
        NetworkDescription(ingress=["10.0.0.0/8", "x"])
    with pytest.raises(aiores.BadParameter, match=r"NetworkDescription\.isolated"):
        NetworkDescription(isolated="no")  # type: ignore[arg-type]
    assert NetworkDescription(ingress="192.0.2.7/24").ingress == ("192.0.2.0/24",)
    with pytest.raises(aiores.BadParameter, match=r"ComputeDescription\.network"):
        ComputeDescription(network=42)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_machines_of_a_network_reach_each_other_at_private_addresses() -> None:
    async with aiores.Session() as session:
        mgr = session.manager(URL)
        net, vms = await _on_a_network(mgr, "127.44.0.0/28", 2)
        addresses = [vm.private_address for vm in vms]
        assert len(set(addresses)) == 2
        for vm, address in zip(vms, addresses, strict=True):
            assert address is not None
            assert ipaddress.ip_address(address) in ipaddress.ip_network("127.44.0.0/28")
            assert vm.access is not None
            assert f"@{address}:" in vm.access
            assert vm.extra["network"] == net.native_id
            # Its SSH server listens at its own address alone.
            port = int(vm.access.rsplit(":", 1)[1])
            at = await asyncio.to_thread(_listening_at, port)
            assert address in at
            assert at <= set(addresses)  # never at 127.0.0.1 or on all addresses
        ports = await _start_servers(vms)
        first, second = vms
        assert first.private_address is not None
        answer = await second.run(
            _python(CLIENT, f"{first.private_address}:{ports[first.private_address]}")
        )
        assert answer.exit_status == 0, answer
        assert answer.stdout.strip() == f"{first.private_address} hello from {first.native_id}"
        # Nothing of the first VM answers at 127.0.0.1 on that port.
        port = ports[first.private_address]
        assert await asyncio.to_thread(_not_from, first.native_id, "127.0.0.1", port)
        # Machines on no network keep listening on 127.0.0.1.
        plain = await mgr.acquire(ComputeDescription())
        assert plain.private_address == "127.0.0.1"
        await mgr.destroy([*vms, plain, net])
        assert {r.state for r in [*vms, plain, net]} == {ResourceState.CANCELED}


@pytest.mark.asyncio
async def test_a_fleet_on_a_network_bootstraps_over_private_hostnames() -> None:
    async with aiores.Session() as session:
        mgr = session.manager(URL)
        async with mgr.acquired(NetworkDescription(tags={"pool"})) as net:
            async with session.fleet() as fleet:
                fleet.provision(mgr, ComputeDescription(), count=3, tags="condor", network=net)
                group = await fleet.wait("condor", timeout=STEP)
                hosts = group.private_hostnames
                assert net.cidr is not None
                assert all(
                    h is not None and ipaddress.ip_address(h) in ipaddress.ip_network(net.cidr)
                    for h in hosts
                )
                machines = [r for r in group.resources if isinstance(r, Compute)]
                ports = await _start_servers(machines)
                targets = [f"{h}:{ports[h]}" for h in hosts if h is not None]
                results = await group.run(_python(CLIENT, *targets))
                for result in results:
                    said = result.stdout.splitlines()
                    assert said == [
                        f"{vm.private_address} hello from {vm.native_id}" for vm in machines
                    ]
            fleet_two = session.fleet()
            with pytest.raises(aiores.BadParameter, match="belongs to ec2://"):
                fleet_two.provision(mgr, ComputeDescription(), network="[ec2://us-east-1]-[vpc-1]")


@pytest.mark.asyncio
async def test_errors_network_in_use_of_another_cloud_or_unknown() -> None:
    async with aiores.Session() as session:
        mgr = session.manager(URL)
        net = await mgr.acquire(NetworkDescription(cidr="127.45.0.0/28"))
        vm = await mgr.acquire(ComputeDescription(network=net.id, ready=None))
        with pytest.raises(aiores.IncorrectState, match=f"still used by 1 VM.*{vm.native_id}"):
            await net.destroy()
        assert net.state is ResourceState.ACTIVE
        with pytest.raises(aiores.BadParameter, match="belongs to ec2://us-east-1"):
            await mgr.acquire(ComputeDescription(network="[ec2://us-east-1]-[vpc-0123]"))
        with pytest.raises(aiores.DoesNotExist, match="no network 'net-0000000000'"):
            await mgr.acquire(ComputeDescription(network="net-0000000000"))
        # A /28 has 14 addresses: 13 more fit, the 15th does not.
        with pytest.raises(aiores.IncorrectState, match="13 free addresses, not 14"):
            await mgr.acquire_many(ComputeDescription(network=net, ready=None), 14)
        await mgr.destroy([vm, net])  # the machine first, then its network
        assert net.state is ResourceState.CANCELED
        with pytest.raises(aiores.IncorrectState, match="destroyed"):
            await mgr.acquire(ComputeDescription(network=net))


@pytest.mark.asyncio
async def test_reap_releases_a_network_left_by_a_killed_program() -> None:
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(CHILD), URL, "netkill", "2"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == -9, child.stderr
    net_id, *vm_ids = child.stdout.decode().split()
    assert len(vm_ids) == 2
    async with aiores.Session() as session:
        mgr = session.manager(URL)
        assert [n.id for n in await mgr.list(rtype="network", tags={"netkill"})] == [net_id]
        reaped = await session.reap()
        assert reaped.problems == []
        assert sorted(reaped.released) == sorted([net_id, *vm_ids])
        assert await mgr.list(tags={"netkill"}) == []
        gone = await mgr.get(net_id)
        assert gone.state is ResourceState.CANCELED


@pytest.mark.asyncio
async def test_a_network_spans_the_regions_of_a_large_cloud(own_cloud: Path) -> None:
    # Two VMs per process: the third and fourth are served by a region process, and
    # still get addresses of the network, reachable from the first process's VMs.
    await asyncio.to_thread(start_sim_cloud, own_cloud, watch_pid=os.getpid(), region_capacity=2)
    async with aiores.Session() as session:
        mgr = session.manager(URL)
        net, vms = await _on_a_network(mgr, "127.46.0.0/28", 4)
        addresses = {vm.private_address for vm in vms}
        assert addresses == {f"127.46.0.{i}" for i in range(1, 5)}
        ports = await _start_servers(vms[-1:])
        last = vms[-1].private_address
        assert last is not None
        answer = await vms[0].run(_python(CLIENT, f"{last}:{ports[last]}"))
        assert answer.stdout.strip() == f"{last} hello from {vms[-1].native_id}"
        # The network knows its members in the region too.
        await mgr.destroy(vms[:3])
        with pytest.raises(aiores.IncorrectState, match=vms[-1].native_id):
            await net.destroy()
        more = await mgr.acquire_many(ComputeDescription(network=net, ready=None), 3)
        assert {vm.private_address for vm in more} == {f"127.46.0.{i}" for i in (1, 2, 3)}
        await mgr.destroy([vms[-1], *more, net])
        assert net.state is ResourceState.CANCELED
