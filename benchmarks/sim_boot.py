"""Boot N simulated VMs, run ``true`` on all, destroy them: wall time per phase, peak RSS.

Starts a sim cloud process of its own (in a temporary directory), then in one
plain ``aiores.Session`` (each VM names the aiores-managed key as its login key):

- acquire: one ``acquire_many(desc, N)`` (the cloud makes N host keys, disks, ports);
- ACTIVE: ``wait(ACTIVE)`` on all N; each VM boots after ``--boot-delay`` seconds, then
  the core probes it over SSH (ACTIVE means SSH answered with the published host key);
- run: ``vm.run("true")`` on all N at once (on the connections the probes opened);
- raw baseline: the same ``true`` with raw asyncssh, a new connection per VM, one
  shared options object (what a hand-written fan-out costs on the same VMs);
- destroy: one ``mgr.destroy(vms)`` (returns once every VM's processes and disk are gone).

Prints wall time per phase, the event loop's lag (p99 lateness of a 10 ms ticker), and
peak RSS of this client process and of the cloud process (VmHWM)::

    .venv/bin/python benchmarks/sim_boot.py [--vms 500] [--boot-delay 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncssh

import aiores
from aiores import Compute, ComputeDescription, ResourceState
from aiores_sim import MANAGED_KEY, cloud_pid, start_cloud, stop_cloud

T = TypeVar("T")


class Lag:
    """p99 lateness of a 10 ms ticker on the loop (how long the loop was blocked)."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            self.late.append(loop.time() - due)

    def start(self) -> None:
        self.late.clear()
        self._task = asyncio.ensure_future(self._tick())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if len(self.late) < 2:
            return 0.0
        return statistics.quantiles(self.late, n=100)[98]


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak RSS in MiB of this process (``pid`` None) or of ``pid`` (VmHWM)."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def timed(
    rows: list[tuple[str, float, float]], phase: str, fn: Callable[[], Awaitable[T]]
) -> T:
    lag = Lag()
    lag.start()
    start = time.perf_counter()
    try:
        return await fn()
    finally:
        wall = time.perf_counter() - start
        rows.append((phase, wall, await lag.stop()))


async def raw_true(vms: list[Compute], key: Path) -> None:
    """``true`` on every VM with raw asyncssh: a new connection each, shared options."""
    lines = [f"[127.0.0.1]:{vm.extra['port']} {vm.host_keys[0]}" for vm in vms]
    options = await asyncssh.SSHClientConnectionOptions.construct(
        known_hosts=asyncssh.import_known_hosts("\n".join(lines) + "\n"),
        client_keys=[asyncssh.read_private_key(key)],
        config=None,
    )
    limit = asyncio.Semaphore(64)  # as the aiores pool bounds handshakes

    async def one(vm: Compute) -> None:
        async with limit:
            conn = await asyncssh.connect("127.0.0.1", int(vm.extra["port"]), options=options)
        async with conn:
            result = await conn.run("true", check=True)
            assert result.exit_status == 0

    await asyncio.gather(*(one(vm) for vm in vms))


async def main(count: int, boot_delay: str) -> None:
    rows: list[tuple[str, float, float]] = []
    work = Path(tempfile.mkdtemp(prefix="aiores-sim-bench-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    directory = work / "sim"
    await timed(rows, "start the cloud process", lambda: start_cloud(directory))
    pid = await cloud_pid(directory)
    assert pid is not None
    cloud_rss = 0.0
    try:
        async with aiores.Session() as session:
            mgr = session.manager(f"sim://?boot_delay={boot_delay}")
            desc = ComputeDescription(template="tiny", tags={"bench"})
            vms = await timed(
                rows, f"acquire {count} (one call)", lambda: mgr.acquire_many(desc, count)
            )

            async def active() -> None:
                await asyncio.gather(*(vm.wait(ResourceState.ACTIVE, timeout=600) for vm in vms))

            await timed(rows, f"all ACTIVE (boot {boot_delay} s + SSH probe)", active)

            async def run_true() -> None:
                results = await asyncio.gather(*(vm.run("true") for vm in vms))
                assert all(r.exit_status == 0 for r in results)

            await timed(rows, "run true on all (aiores, pooled)", run_true)
            await timed(
                rows,
                "run true on all (raw asyncssh, new conns)",
                lambda: raw_true(vms, work / "state" / MANAGED_KEY),
            )
            cloud_rss = await asyncio.to_thread(peak_rss_mib, pid)
            await timed(rows, f"destroy {count} (one call)", lambda: mgr.destroy(vms))
            assert all(vm.state is ResourceState.CANCELED for vm in vms)
    finally:
        await timed(rows, "stop the cloud process", lambda: stop_cloud(directory))
        await asyncio.to_thread(shutil.rmtree, work, True)
    width = max(len(phase) for phase, _, _ in rows)
    print(
        f"sim boot benchmark: {count} VMs, boot delay {boot_delay} s, "
        f"Python {sys.version.split()[0]}, asyncssh {asyncssh.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"| {'phase':<{width}} | wall     | loop lag p99 |")
    print(f"|{'-' * (width + 2)}|----------|--------------|")
    for phase, wall, lag in rows:
        print(f"| {phase:<{width}} | {wall:6.2f} s | {lag * 1000:8.1f} ms  |")
    print(f"peak RSS: client {peak_rss_mib():.0f} MiB, cloud process {cloud_rss:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=500)
    parser.add_argument("--boot-delay", default="1")
    args = parser.parse_args()
    asyncio.run(main(args.vms, args.boot_delay))
