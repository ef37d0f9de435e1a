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

Prints per phase: wall time, this client's CPU (``time.process_time``, all its
threads) in all and per VM, the event loop's lag (p99 and max lateness of a 10 ms
ticker) and the errors (a VM that did not reach ACTIVE, a ``true`` that failed: each
is counted, the first few printed; the program exits 1 if there was any); then the
load average before and after, the cloud's processes (a large cloud shards itself
over several, see :mod:`aiores_sim._regions`), their CPU and peak RSS (VmHWM), and the
client's peak RSS::

    .venv/bin/python benchmarks/sim_boot.py [--vms 500] [--boot-delay 1] [--no-raw]
        [--profile FILE]   # cProfile of the client from acquire to all ACTIVE
        [--lag-json FILE]  # every ticker sample: seconds since start, lateness, phase
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncssh

import aiores
from aiores import Compute, ComputeDescription, ResourceState
from aiores_sim import MANAGED_KEY, cloud_pid, start_cloud, stop_cloud
from aiores_ssh import CIPHERS

T = TypeVar("T")


class Lag:
    """p99 lateness of a 10 ms ticker on the loop (how long the loop was blocked)."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self.at: list[float] = []  # the loop's time of each sample
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            self.at.append(loop.time())
            self.late.append(self.at[-1] - due)

    def start(self) -> None:
        self.late.clear()
        self.at.clear()
        self._task = asyncio.ensure_future(self._tick())

    async def stop(self) -> tuple[float, float]:
        """(p99, max) lateness in seconds."""
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if len(self.late) < 2:
            return 0.0, max(self.late, default=0.0)
        return statistics.quantiles(self.late, n=100)[98], max(self.late)


def peak_rss_mib(pid: int | None = None) -> float:
    """Peak RSS in MiB of this process (``pid`` None) or of ``pid`` (VmHWM)."""
    if pid is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cloud_processes(pid: int) -> list[int]:
    """The cloud process and the region processes it started (its sim-server descendants)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            cmdline = Path(f"/proc/{current}/cmdline").read_bytes()
        except OSError:
            continue
        if b"aiores_sim.server" in cmdline:
            found.append(current)
            todo.extend(children.get(current, ()))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of ``pids`` so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Row:
    phase: str
    wall: float
    cpu: float
    lag_p99: float
    lag_max: float
    per_vm: int = 0
    errors: list[str] = field(default_factory=list)
    ticks: list[tuple[float, float]] = field(default_factory=list)  # (loop time, lateness)


async def timed(
    rows: list[Row],
    phase: str,
    fn: Callable[[], Awaitable[T]],
    *,
    per_vm: int = 0,
    profile: cProfile.Profile | None = None,
) -> T:
    lag = Lag()
    lag.start()
    start, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    try:
        return await fn()
    finally:
        if profile is not None:
            profile.disable()
        wall, used = time.perf_counter() - start, time.process_time() - cpu
        p99, worst = await lag.stop()
        rows.append(
            Row(phase, wall, used, p99, worst, per_vm, ticks=[*zip(lag.at, lag.late, strict=True)])
        )


def failures(rows: list[Row], outcomes: list[object]) -> None:
    """Count the exceptions among ``outcomes`` as errors of the last phase."""
    rows[-1].errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]


async def raw_true(vms: list[Compute], key: Path) -> None:
    """``true`` on every VM with raw asyncssh: a new connection each, shared options."""
    lines = [f"[127.0.0.1]:{vm.extra['port']} {vm.host_keys[0]}" for vm in vms]
    options = await asyncssh.SSHClientConnectionOptions.construct(
        encryption_algs=list(CIPHERS),  # the ciphers aiores offers, in its order
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


def write_lag(path: str, rows: list[Row], start: float, count: int) -> None:
    """The ticker's samples of every phase: seconds since ``start``, lateness in s."""
    phases = [
        {
            "phase": row.phase,
            "t": [t - start for t, _ in row.ticks],
            "lag": [x for _, x in row.ticks],
        }
        for row in rows
    ]
    Path(path).write_text(json.dumps({"vms": count, "tick": 0.01, "phases": phases}) + "\n")


async def main(
    count: int, boot_delay: str, raw: bool, profile_file: str | None, lag_json: str | None = None
) -> int:
    started = asyncio.get_running_loop().time()
    rows: list[Row] = []
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="aiores-sim-bench-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    directory = work / "sim"
    profile = cProfile.Profile() if profile_file else None
    await timed(rows, "start the cloud process", lambda: start_cloud(directory))
    pid = await cloud_pid(directory)
    assert pid is not None
    cloud_rss: list[float] = []
    cloud_cpu = 0.0
    try:
        async with aiores.Session() as session:
            mgr = session.manager(f"sim://?boot_delay={boot_delay}")
            desc = ComputeDescription(template="tiny", tags={"bench"})
            vms = await timed(
                rows,
                f"acquire {count} (one call)",
                lambda: mgr.acquire_many(desc, count),
                per_vm=count,
                profile=profile,
            )

            async def active() -> list[object]:
                return await asyncio.gather(
                    *(vm.wait(ResourceState.ACTIVE, timeout=1200) for vm in vms),
                    return_exceptions=True,
                )

            outcomes = await timed(
                rows,
                f"all ACTIVE (boot {boot_delay} s + SSH probe)",
                active,
                per_vm=count,
                profile=profile,
            )
            failures(rows, outcomes)
            up = [vm for vm in vms if vm.state is ResourceState.ACTIVE]

            async def run_true() -> list[object]:
                results = await asyncio.gather(
                    *(vm.run("true", timeout=1200) for vm in up), return_exceptions=True
                )
                return [
                    r if isinstance(r, BaseException) or r.exit_status == 0 else f"exit {r}"
                    for r in results
                ]

            outcomes = await timed(
                rows, "run true on all (aiores, pooled)", run_true, per_vm=len(up)
            )
            failures(rows, outcomes)
            if raw:
                await timed(
                    rows,
                    "run true on all (raw asyncssh, new conns)",
                    lambda: raw_true(up, work / "state" / MANAGED_KEY),
                    per_vm=len(up),
                )
            pids = await asyncio.to_thread(cloud_processes, pid)
            cloud_rss = [await asyncio.to_thread(peak_rss_mib, p) for p in pids]
            cloud_cpu = await asyncio.to_thread(cpu_seconds, pids)
            await timed(rows, f"destroy {count} (one call)", lambda: mgr.destroy(vms), per_vm=count)
            left = [vm for vm in vms if vm.state is not ResourceState.CANCELED and vm.state.final]
            rows[-1].errors = [f"{vm.id} ended {vm.state.name}" for vm in left]
    finally:
        await timed(rows, "stop the cloud process", lambda: stop_cloud(directory))
        await asyncio.to_thread(shutil.rmtree, work, True)
    load_after = os.getloadavg()
    width = max(len(row.phase) for row in rows)
    print(
        f"sim boot benchmark: {count} VMs, boot delay {boot_delay} s, "
        f"Python {sys.version.split()[0]}, asyncssh {asyncssh.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"| {'phase':<{width}} | wall      | client CPU | per VM   | lag p99   | lag max   "
        "| errors |"
    )
    print(
        f"|{'-' * (width + 2)}|-----------|------------|----------|-----------|-----------"
        "|--------|"
    )
    errors = 0
    for row in rows:
        per = f"{row.cpu / row.per_vm * 1000:5.2f} ms" if row.per_vm else "       "
        print(
            f"| {row.phase:<{width}} | {row.wall:7.2f} s | {row.cpu:8.2f} s | {per}  "
            f"| {row.lag_p99 * 1000:6.0f} ms | {row.lag_max * 1000:6.0f} ms "
            f"| {len(row.errors):6d} |"
        )
        errors += len(row.errors)
    for row in rows:
        for message in sorted(set(row.errors))[:5]:
            print(f"  {row.phase}: {row.errors.count(message)} x {message}")
    print(
        "load average before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    print(
        f"cloud: {len(cloud_rss)} process(es), {cloud_cpu:.1f} s CPU until destroy, peak RSS "
        + " + ".join(f"{r:.0f}" for r in cloud_rss)
        + f" MiB; client peak RSS {peak_rss_mib():.0f} MiB"
    )
    if lag_json is not None:
        write_lag(lag_json, rows, started, count)
        print(f"loop lag samples in {lag_json}")
    if profile is not None and profile_file is not None:
        profile.dump_stats(profile_file)
        print(f"client profile (acquire to all ACTIVE) in {profile_file}")
    return 1 if errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=500)
    parser.add_argument("--boot-delay", default="1")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw asyncssh baseline")
    parser.add_argument("--profile", help="write a cProfile of the client (acquire to ACTIVE)")
    parser.add_argument("--lag-json", help="write the loop-lag ticker's samples (JSON)")
    args = parser.parse_args()
    sys.exit(
        asyncio.run(main(args.vms, args.boot_delay, not args.no_raw, args.profile, args.lag_json))
    )
