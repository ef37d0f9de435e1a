"""Fan-out of ``true`` over SSH: aiores' ssh:// adaptor against raw asyncssh.

Starts its own OpenSSH sshds on loopback (permissive limits, 16 ports each, so N
targets are N distinct (host, port) endpoints and every connection is a new one),
then for each N runs, in the same process and alternating:

- raw asyncssh: one shared ``SSHClientConnectionOptions`` (known_hosts read once,
  key loaded once, within the cold run as aiores' pool does; the ciphers, timeouts
  and keepalive of aiores' pool), ``connect`` + ``run("true")`` per target, all
  concurrent with at most 64 handshakes at a time as aiores' pool allows
  (``--raw-handshakes 0``: no bound);
  then ``run("true")`` again on the open connections (warm);
- aiores: one ``Session`` with an ``SSHContext``, ``session.command_runner(url)`` per
  target and ``run("true")``, all concurrent (cold: new connections); then again on
  the session's pool (warm).

Prints wall time and client CPU (``time.process_time``, all threads of this process)
with the aiores/raw ratios, client CPU per host, and the load average at the start
and end (other work on the machine moves the figures). Run as root (it starts sshd and
logs in as the ``aiores-test`` user it makes if missing)::

    .venv/bin/python benchmarks/ssh_fanout.py [--sizes 100 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiores  # noqa: E402
from aiores_ssh import CIPHERS  # noqa: E402
from tests.ssh.servers import PERMISSIVE, Keys, Sshd, free_port, private_dir, remove_dir  # noqa: E402

PORTS_PER_SSHD = 16  # sshd refuses more listen sockets
#: Handshakes the raw baseline has in flight at once (0: no bound); aiores' pool
#: allows 64 (Pool.max_handshakes). Set by --raw-handshakes.
RAW_HANDSHAKES = [64]


@dataclass
class Sample:
    wall: float
    cpu: float


async def measure(fn: Callable[[], Awaitable[None]]) -> Sample:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await fn()
    return Sample(time.perf_counter() - wall0, time.process_time() - cpu0)


class Fleet:
    """Enough sshds for ``n`` distinct ports, one known_hosts file for all."""

    def __init__(self, n: int, keys: Keys) -> None:
        ports = [free_port() for _ in range(n)]
        while len(set(ports)) < n:
            ports = [*dict.fromkeys(ports), free_port()]
        self.ports = ports
        self.sshds = [
            Sshd(keys, f"bench{n}-{i}", PERMISSIVE, ports[i : i + PORTS_PER_SSHD])
            for i in range(0, n, PORTS_PER_SSHD)
        ]
        self.known_hosts = keys.directory / f"known_hosts-bench-{n}"
        self.known_hosts.write_text(
            "".join(f"[127.0.0.1]:{port} {keys.host_public}\n" for port in ports)
        )
        self.keys = keys

    def start(self) -> None:
        for sshd in self.sshds:
            sshd.start()

    def stop(self) -> None:
        for sshd in self.sshds:
            sshd.stop()


async def raw(fleet: Fleet, user: str) -> tuple[Sample, Sample]:
    defaults = aiores.SSHContext()
    conns: list[asyncssh.SSHClientConnection] = []

    async def cold() -> None:
        # Built within the cold run, as aiores' pool builds its options (known_hosts
        # read and parsed) on the first connect of a session.
        options = await asyncssh.SSHClientConnectionOptions.construct(
            encryption_algs=list(CIPHERS),  # the ciphers aiores offers, in its order
            known_hosts=asyncssh.import_known_hosts(
                await asyncio.to_thread(fleet.known_hosts.read_text)
            ),
            client_keys=[str(fleet.keys.client_key)],
            config=[],
            username=user,
            # The timeouts and keepalive aiores' pool sets (an SSHContext's defaults):
            # asyncssh re-arms the keepalive timer on every packet it receives.
            connect_timeout=defaults.connect_timeout,
            login_timeout=defaults.login_timeout,
            keepalive_interval=defaults.keepalive_interval,
            keepalive_count_max=3,
        )

        bound = RAW_HANDSHAKES[0]
        gate = asyncio.Semaphore(bound) if bound else contextlib.nullcontext()

        async def one(port: int) -> None:
            async with gate:
                conn = await asyncssh.connect("127.0.0.1", port, options=options)
            conns.append(conn)
            result = await conn.run("true")
            assert result.exit_status == 0, result

        await asyncio.gather(*(one(port) for port in fleet.ports))

    async def warm() -> None:
        results = await asyncio.gather(*(conn.run("true") for conn in conns))
        assert all(r.exit_status == 0 for r in results)

    try:
        return await measure(cold), await measure(warm)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn in conns))


async def via_aiores(fleet: Fleet, user: str) -> tuple[Sample, Sample]:
    ctx = aiores.SSHContext(
        key_files=[str(fleet.keys.client_key)], known_hosts=[str(fleet.known_hosts)], config=[]
    )
    async with aiores.Session(journal=None, contexts=[ctx]) as session:
        runners = [
            await session.command_runner(f"ssh://{user}@127.0.0.1:{port}") for port in fleet.ports
        ]

        async def run_all() -> None:
            results = await asyncio.gather(*(r.run("true") for r in runners))
            assert all(r.ok for r in results), [r for r in results if not r.ok][:3]

        return await measure(run_all), await measure(run_all)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--raw-handshakes",
        type=int,
        default=64,
        help="handshakes in flight at once for raw asyncssh (0: no bound; aiores: 64)",
    )
    args = parser.parse_args()
    RAW_HANDSHAKES[0] = args.raw_handshakes

    load_before = os.getloadavg()
    directory = private_dir("aiores-bench-")
    keys = Keys.make(directory)
    rows = []
    try:
        for n in args.sizes:
            fleet = Fleet(n, keys)  # ports picked just before use
            await asyncio.to_thread(fleet.start)
            user = fleet.sshds[0].user
            samples: dict[str, list[Sample]] = {k: [] for k in ("rc", "rw", "ac", "aw")}
            try:
                await raw(fleet, user)  # warm-up: first logins, page cache
                for i in range(args.repeat):
                    order = [raw, via_aiores] if i % 2 == 0 else [via_aiores, raw]
                    for fn in order:
                        cold, warm = await fn(fleet, user)
                        tag = "r" if fn is raw else "a"
                        samples[tag + "c"].append(cold)
                        samples[tag + "w"].append(warm)
            finally:
                await asyncio.to_thread(fleet.stop)
            for mode, r, a in (("cold", "rc", "ac"), ("warm", "rw", "aw")):
                rw = statistics.median(s.wall for s in samples[r])
                aw = statistics.median(s.wall for s in samples[a])
                rc = statistics.median(s.cpu for s in samples[r])
                ac = statistics.median(s.cpu for s in samples[a])
                rows.append((n, mode, rw, aw, rc, ac))
    finally:
        remove_dir(directory)

    load = " -> ".join(" ".join(f"{x:.2f}" for x in avg) for avg in (load_before, os.getloadavg()))
    bound = f"at most {args.raw_handshakes}" if args.raw_handshakes else "no bound on"
    print(
        f"ssh fan-out of `true`, median of {args.repeat} runs (one sshd per 16 ports; "
        f"raw asyncssh: {bound} handshakes at a time, aiores: its pool's 64)"
    )
    print(f"load average (1, 5, 15 min) at start -> end: {load}")
    head = (
        f"{'N':>4} {'mode':<5} {'raw wall':>9} {'aiores wall':>11} {'ratio':>6} "
        f"{'raw cpu':>8} {'aiores cpu':>10} {'ratio':>6} {'aiores cpu/host':>16}"
    )
    print(head)
    print("-" * len(head))
    for n, mode, rw, aw, rc, ac in rows:
        print(
            f"{n:>4} {mode:<5} {rw:>8.3f}s {aw:>10.3f}s {ratio(aw, rw):>6} "
            f"{rc:>7.3f}s {ac:>9.3f}s {ratio(ac, rc):>6} {ac / n * 1000:>13.2f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
