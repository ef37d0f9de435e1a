"""``group.run("true")`` on N sim VMs against raw asyncssh, and a serial loop for scale.

Starts a sim cloud process of its own (temporary directory) and provisions N VMs with
one ``fleet.provision`` (``ready=None``: no SSH probe, so no connection is opened
before the first measured run). Then, for each round, in one process and alternating
which goes first:

- aiores: a new ``Session`` (so a new, empty connection pool), the N VMs found again
  with one ``manager.list``, as an ``aiores.Group``; ``group.run("true")`` (cold: N new
  connections), then again (warm: on the pooled connections);
- raw asyncssh, with the same targets: the host keys the cloud published, the same
  client key, the same connection options as aiores' pool (known_hosts of those keys,
  no ssh_config, the same timeouts and keepalive), new connections bounded to 64
  handshakes at a time as aiores' pool bounds them; ``conn.run("true")`` (cold), then
  again on the open connections (warm).

Then a precip-style serial loop on ``--serial`` hosts: one host after another, a new
connection each (a fresh session), extrapolated to N.

Prints the median wall time and client CPU (``time.process_time``) per method, the
ratios aiores / raw, and the load average before and after::

    .venv/bin/python benchmarks/fanout.py [--vms 500] [--repeat 3] [--serial 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

import aiores
from aiores import Compute, ComputeDescription, Group, SSHContext
from aiores_sim import managed_key, start_cloud, stop_cloud
from aiores_ssh import CIPHERS

URL = "sim://?boot_delay=0.2-1"
TAG = "fanout-bench"
#: The pool's bound on handshakes in flight (aiores_ssh Pool.max_handshakes).
HANDSHAKES = 64
#: The cold-run goal: aiores within this factor of raw asyncssh.
GOAL = 1.10
#: Seconds between two measurements, for the cloud to finish closing connections.
SETTLE = 1.0


@dataclass
class Sample:
    wall: float
    cpu: float


async def measure(fn: Callable[[], Awaitable[object]]) -> Sample:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await fn()
    return Sample(time.perf_counter() - wall0, time.process_time() - cpu0)


def context(key: Path) -> SSHContext:
    return SSHContext(key_files=[str(key)], known_hosts=[], config=[])


async def provision(key: Path, count: int) -> list[tuple[int, str, str]]:
    """Boot ``count`` VMs (left running); ``(port, host key, user)`` of each."""
    async with aiores.Session(journal=None, contexts=[context(key)]) as session:
        fleet = session.fleet()  # used plainly: the VMs outlive it
        fleet.provision(URL, ComputeDescription(template="tiny", ready=None), count, tags=TAG)
        group = await fleet.wait(timeout=600)
        targets = []
        for vm in group:
            assert vm.access is not None
            user = vm.access.removeprefix("ssh://").split("@", 1)[0]
            targets.append((int(vm.extra["port"]), vm.host_keys[0], user))
        return targets


async def found_again(session: aiores.Session) -> list[Compute]:
    """The benchmark's VMs in ``session``, with one describe for all."""
    vms = await session.manager(URL).list(tags=TAG)
    return sorted((vm for vm in vms if isinstance(vm, Compute)), key=lambda vm: vm.id)


async def via_aiores(key: Path, count: int) -> tuple[Sample, Sample]:
    async with aiores.Session(journal=None, contexts=[context(key)]) as session:
        group = Group(await found_again(session))
        assert len(group) == count, len(group)

        async def run_all() -> None:
            result = await group.run("true")
            assert result.ok

        return await measure(run_all), await measure(run_all)


async def raw(key: Path, targets: list[tuple[int, str, str]]) -> tuple[Sample, Sample]:
    conns: list[asyncssh.SSHClientConnection] = []

    async def cold() -> None:
        known = "".join(f"[127.0.0.1]:{port} {host_key}\n" for port, host_key, _ in targets)
        options = await asyncssh.SSHClientConnectionOptions.construct(
            encryption_algs=list(CIPHERS),  # the ciphers aiores offers, in its order
            known_hosts=asyncssh.import_known_hosts(known),
            client_keys=[str(key)],
            config=[],
            username=targets[0][2],
            connect_timeout=30.0,
            login_timeout=30.0,
            keepalive_interval=30.0,
            keepalive_count_max=3,
        )
        gate = asyncio.Semaphore(HANDSHAKES)

        async def one(port: int) -> None:
            async with gate:
                conn = await asyncssh.connect("127.0.0.1", port, options=options)
            conns.append(conn)
            result = await conn.run("true")
            assert result.exit_status == 0, result

        await asyncio.gather(*(one(port) for port, _, _ in targets))

    async def warm() -> None:
        results = await asyncio.gather(*(conn.run("true") for conn in conns))
        assert all(r.exit_status == 0 for r in results)

    try:
        return await measure(cold), await measure(warm)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))


async def serial(key: Path, hosts: int) -> Sample:
    """precip's way: one host after another, a new connection each."""
    async with aiores.Session(journal=None, contexts=[context(key)]) as session:
        vms = (await found_again(session))[:hosts]

        async def loop() -> None:
            for vm in vms:
                result = await vm.run("true")
                assert result.ok, result

        return await measure(loop)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


async def main(count: int, repeat: int, hosts: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="aiores-fanout-bench-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    load_before = os.getloadavg()
    samples: dict[str, list[Sample]] = {k: [] for k in ("rc", "rw", "ac", "aw")}
    try:
        await start_cloud(work / "sim")
        key = await asyncio.to_thread(managed_key, work / "state")
        boot = time.perf_counter()
        targets = await provision(key, count)
        boot = time.perf_counter() - boot
        await raw(key, targets)  # warm-up: page cache, first logins
        for i in range(repeat):
            for method in ("raw", "aiores") if i % 2 == 0 else ("aiores", "raw"):
                # Each method starts from the same state: the previous one's garbage
                # collected, its closed connections torn down on the cloud's side.
                gc.collect()
                await asyncio.sleep(SETTLE)
                if method == "raw":
                    cold, warm = await raw(key, targets)
                else:
                    cold, warm = await via_aiores(key, count)
                samples[method[0] + "c"].append(cold)
                samples[method[0] + "w"].append(warm)
        hosts = min(hosts, count)
        one_by_one = await serial(key, hosts)
    finally:
        await stop_cloud(work / "sim")  # ends every VM
        await asyncio.to_thread(shutil.rmtree, work, True)
    load_after = os.getloadavg()

    def med(key: str, field: str) -> float:
        return float(statistics.median(getattr(s, field) for s in samples[key]))

    print(
        f"fan-out of `true` on {count} sim VMs, median of {repeat} rounds "
        f"(Python {sys.version.split()[0]}, asyncssh {asyncssh.__version__}, "
        f"{os.cpu_count()} CPUs; {count} VMs ACTIVE in {boot:.1f} s)"
    )
    head = (
        f"| {'mode':<4} | {'raw wall':>8} | {'aiores wall':>11} | {'ratio':>5} "
        f"| {'raw cpu':>7} | {'aiores cpu':>10} | {'ratio':>5} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for mode, r, a in (("cold", "rc", "ac"), ("warm", "rw", "aw")):
        rw, aw, rc, ac = med(r, "wall"), med(a, "wall"), med(r, "cpu"), med(a, "cpu")
        print(
            f"| {mode:<4} | {rw:>6.2f} s | {aw:>9.2f} s | {ratio(aw, rw):>5} "
            f"| {rc:>5.2f} s | {ac:>8.2f} s | {ratio(ac, rc):>5} |"
        )
    for name, which in (("raw cold", "rc"), ("aiores cold", "ac")):
        print(f"{name} per round: " + ", ".join(f"{s.wall:.2f} s" for s in samples[which]))
    per_host = one_by_one.wall / hosts
    print(
        f"serial (precip-style, one host after another, new connection each): {hosts} hosts "
        f"in {one_by_one.wall:.2f} s = {per_host * 1000:.0f} ms/host; extrapolated to "
        f"{count}: {per_host * count:.1f} s, {per_host * count / med('ac', 'wall'):.1f}x the "
        "cold fan-out"
    )
    cold_ratio = med("ac", "wall") / med("rc", "wall")
    verdict = "met" if cold_ratio <= GOAL else "missed"
    print(f"goal: cold wall aiores/raw <= {GOAL:.2f}x: {cold_ratio:.2f}x, {verdict}")
    print(
        "load average (1/5/15 min) before: "
        + " ".join(f"{x:.1f}" for x in load_before)
        + ", after: "
        + " ".join(f"{x:.1f}" for x in load_after)
    )
    return 0 if cold_ratio <= GOAL else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serial", type=int, default=50, help="hosts for the serial loop")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.vms, args.repeat, args.serial)))
