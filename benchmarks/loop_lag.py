"""How long the event loop stalls while aiores works at scale: a 10 ms ticker's lateness.

A ticker on the loop sleeps 10 ms again and again and records how late it wakes
(p50, p99, max of the lateness: how long the loop was kept from it), and
``gc.callbacks`` record every full (generation 2) garbage collection's pause. Goal:
lag p99 < 20 ms and max < 100 ms in every scenario. Scenarios, each in this process,
set-up untimed:

- ``local``: 1000 ``local://`` submits gathered at once, then ``wait()`` on all
  (a journalled Session); baseline: 1000 raw ``asyncio.create_subprocess_exec``
  of ``/bin/true`` with ``communicate()``, gathered at once;
- ``sim``: 2000 sim VMs booted through a fleet (untimed), then ``run("true")`` on
  the group measured alone, cold (the first command on the connections the boot
  probes left) and warm (again);
- ``ec2``: 1000 ``ec2://`` boots on a moto server (its own process, as
  benchmarks/ec2_boot.py starts it): ``acquire_many`` with ``ready=None``,
  ``wait(ACTIVE)`` on all, ``destroy``; baseline: the same with raw aioboto3 (one
  RunInstances, one DescribeInstances per 1000 ids until all run, TerminateInstances);
- ``all``: the three at once (on the sim VMs booted for ``sim``, so warm).

Prints one row per measured run, and the load average with every row::

    PYTHONPATH=.:adaptors .venv/bin/python benchmarks/loop_lag.py [--quick]
        [--scenarios local,sim,ec2,all] [--rounds 1] [--culprits] [--nice-servers N]
        [--pin-servers]

``--quick``: 200 local jobs, 200 sim VMs, 200 EC2 boots. ``--culprits`` times every
loop callback and prints the slowest ones of each run (it costs a little).
``--nice-servers N`` runs the sim cloud, its VMs and moto at nice N (they stand for
machines elsewhere; see :func:`renice_trees`); ``--pin-servers`` keeps them on the
last CPU (:func:`pin_trees`). Every row also says in how many iterations the loop
thread itself spent 20 ms of CPU or more, and the most it spent in one (column
``own``); the p99 and max over ticks of the lateness the loop's own work can account
for, the least of a tick's lateness and the loop thread's CPU time since the tick
before (``work``): lag beyond that was waiting, for a CPU or the interpreter; and how
busy the machine's CPUs were during the run (``busy``, from /proc/stat).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
from botocore.config import Config
from local_jobs import raw as raw_local  # type: ignore[import-not-found]  # beside this

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer
from aiores_sim import cloud_pid, start_cloud, stop_cloud

TICK = 0.010
GOAL_P99 = 0.020
GOAL_MAX = 0.100
REGION = "us-east-1"
IMAGE = "ami-12c6146b"
TYPE = "t3.micro"


class GCPauses:
    """Durations of garbage collections, by generation, while installed."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = collections.defaultdict(list)
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._began)

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


class Culprits:
    """The slowest loop callbacks and iterations while installed.

    Wraps ``asyncio.Handle._run`` (each callback's time) and the running loop's
    ``_run_once`` (each iteration's callbacks together): a lag made of one slow
    callback shows in the first list, one made of thousands of small ones (every
    connection's answer ready at once) in the second, grouped by what ran (a task
    by the coroutine it resumed in, a callback by its function).
    """

    def __init__(self, keep: int = 8, iterations: int = 3) -> None:
        self.keep = keep
        self.iterations = iterations
        self.slowest: list[tuple[float, str]] = []
        #: (callbacks' time, their count, time and count by what ran) per slow iteration.
        self.slow_turns: list[tuple[float, int, dict[str, list[float]]]] = []
        self._original = asyncio.events.Handle._run
        self._turn: list[tuple[str, float]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> Culprits:
        original, slowest, turn = self._original, self.slowest, self._turn

        def timed_run(handle: asyncio.Handle) -> None:
            what = _label(handle)
            start = time.perf_counter()
            original(handle)
            spent = time.perf_counter() - start
            turn.append((what, spent))
            if spent > 0.02:
                slowest.append((spent, repr(handle)[:300]))

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
        loop = self._loop = asyncio.get_running_loop()
        run_once = loop._run_once  # type: ignore[attr-defined]

        def timed_run_once() -> None:
            turn.clear()
            run_once()
            spent = sum(t for _, t in turn)
            if spent > 0.02:
                by: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
                for what, t in turn:
                    by[what][0] += t
                    by[what][1] += 1
                self.slow_turns.append((spent, len(turn), dict(by)))

        loop._run_once = timed_run_once  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
        if self._loop is not None:
            del self._loop._run_once  # type: ignore[attr-defined]

    def report(self) -> list[str]:
        lines = [
            f"    {spent * 1000:7.1f} ms  {what}"
            for spent, what in sorted(self.slowest, reverse=True)[: self.keep]
        ]
        for spent, count, by in sorted(self.slow_turns, key=lambda t: -t[0])[: self.iterations]:
            top = sorted(by.items(), key=lambda kv: -kv[1][0])[:4]
            parts = ", ".join(f"{what} {n:.0f}x {t * 1000:.0f} ms" for what, (t, n) in top)
            lines.append(f"    iteration {spent * 1000:7.1f} ms, {count} callbacks: {parts}")
        return lines


def _label(handle: asyncio.Handle) -> str:
    """What a handle runs: a task's innermost awaiting coroutine, else the callback."""
    callback = handle._callback  # type: ignore[attr-defined]
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro: Any = task.get_coro()
        while True:
            inner = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
            if inner is None or (not hasattr(inner, "cr_code") and not hasattr(inner, "ag_code")):
                break
            coro = inner
        code = getattr(coro, "cr_code", None) or getattr(coro, "ag_code", None)
        return f"task:{code.co_qualname}" if code is not None else "task"
    return getattr(callback, "__qualname__", type(callback).__name__)


class OwnTime:
    """The event loop thread's own CPU time in each iteration, while installed.

    An iteration's lag is the loop's own work (callbacks, collections on its thread)
    or waiting: for a CPU (the machine's two are shared with the simulated cloud, moto
    and the local jobs) or for the interpreter (a worker thread holds it). Its thread
    CPU time (``time.thread_time``) is the first part alone.
    """

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def __enter__(self) -> OwnTime:
        loop = self._loop = asyncio.get_running_loop()
        self._previous = loop.__dict__.get("_run_once")
        run_once = loop._run_once  # type: ignore[attr-defined]
        cpu, clock = self.cpu, time.thread_time

        def timed_run_once() -> None:
            start = clock()
            run_once()
            cpu.append(clock() - start)

        loop._run_once = timed_run_once  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        if self._previous is None:
            del self._loop._run_once  # type: ignore[attr-defined]
        else:
            self._loop._run_once = self._previous  # type: ignore[attr-defined]


def quantile99(values: list[float]) -> float:
    if len(values) < 2:
        return max(values, default=0.0)
    return statistics.quantiles(values, n=100, method="inclusive")[98]


@dataclass
class Row:
    scenario: str
    method: str
    wall: float
    late: list[float]
    gc2: list[float]
    load: float
    #: The loop thread's CPU time per iteration (see OwnTime).
    own: list[float] = field(default_factory=list)
    #: Per tick, the lateness the loop's own work can account for: the least of the
    #: lateness and the loop thread's CPU time since the tick before.
    worked: list[float] = field(default_factory=list)
    #: The machine's CPUs busy during the run (0-1, from /proc/stat).
    busy: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return quantile99(self.late) < GOAL_P99 and max(self.late, default=0.0) < GOAL_MAX

    def line(self) -> str:
        late = sorted(self.late) or [0.0]
        p50 = statistics.median(late)
        p99 = (
            statistics.quantiles(late, n=100, method="inclusive")[98] if len(late) >= 2 else late[0]
        )
        worst = late[-1]
        ok = "ok" if self.met else "OVER"
        gc2 = f"{len(self.gc2):3d} x, max {max(self.gc2, default=0) * 1000:5.0f} ms"
        slow = sum(1 for t in self.own if t >= GOAL_P99)
        own = f"{slow:4d}, max {max(self.own, default=0) * 1000:4.0f} ms"
        worked = (
            f"{quantile99(self.worked) * 1000:5.1f} / {max(self.worked, default=0) * 1000:3.0f}"
        )
        return (
            f"| {self.scenario:<6} | {self.method:<18} | {self.wall:7.2f} s "
            f"| {p50 * 1000:5.1f} | {p99 * 1000:6.1f} | {worst * 1000:6.0f} | {ok:<4} "
            f"| {gc2} | {own} | {worked} | {self.busy * 100:3.0f}% | {self.load:5.2f} |"
        )


HEADER = (
    "| scen.  | method             | wall      | p50ms | p99 ms | max ms | goal "
    "| gen-2 GC pauses     | own>=20ms, max | work p99/max | busy | load  |\n"
    "|--------|--------------------|-----------|-------|--------|--------|------"
    "|---------------------|----------------|--------------|------|-------|"
)


def cpu_times() -> tuple[int, int]:
    """The machine's (busy, total) CPU time so far, in clock ticks (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


async def measure(
    scenario: str, method: str, work: Callable[[], Awaitable[object]], culprits: bool
) -> Row:
    """Run ``work`` with the ticker and the GC hooks on; its row (printed at once)."""
    loop = asyncio.get_running_loop()
    late: list[float] = []
    worked: list[float] = []

    async def ticker() -> None:
        cpu = time.thread_time
        while True:
            due, spent = loop.time() + TICK, cpu()
            await asyncio.sleep(TICK)
            lateness = loop.time() - due
            late.append(lateness)
            worked.append(min(lateness, cpu() - spent))

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    spy = Culprits() if culprits else None
    own = OwnTime()
    with GCPauses() as pauses:
        if spy is not None:
            spy.__enter__()
        own.__enter__()
        busy, total = cpu_times()
        start = time.perf_counter()
        try:
            await work()
        finally:
            wall = time.perf_counter() - start
            busy_end, total_end = cpu_times()
            own.__exit__()
            if spy is not None:
                spy.__exit__()
            tick.cancel()
            await asyncio.gather(tick, return_exceptions=True)
    row = Row(
        scenario,
        method,
        wall,
        late,
        pauses.pauses.get(2, []),
        os.getloadavg()[0],
        own=own.cpu,
        worked=worked,
        busy=(busy_end - busy) / max(1, total_end - total),
    )
    print(row.line(), flush=True)
    if spy is not None:
        print("\n".join(spy.report()), flush=True)
    return row


# -- local --------------------------------------------------------------------------------
async def aiores_local(session: aiores.Session, n: int) -> None:
    js = session.job_service("local://")
    desc = aiores.JobDescription(executable="/bin/true")
    jobs = await asyncio.gather(*(js.submit(desc) for _ in range(n)))
    states = await asyncio.gather(*(job.wait() for job in jobs))
    assert all(state is aiores.JobState.DONE for state in states), set(states)


# -- sim ----------------------------------------------------------------------------------
async def sim_run(group: aiores.Group) -> None:
    result = await group.run("true", check=True, timeout=1200)
    assert len(result) == len(group.resources)


# -- ec2 ----------------------------------------------------------------------------------
def ec2_url(endpoint: str) -> str:
    return f"ec2://{REGION}?endpoint={endpoint}&ssh_cidr=127.0.0.1/32&poll=0.5"


async def ec2_session(server: MotoServer, work: Path, name: str) -> aiores.Session:
    """A fresh moto account and a session with its own state directory, where one
    launch already made (and remembered) the key pair and security group, as for
    every session after the first on an account. Not yet entered: ``async with``."""
    await asyncio.to_thread(server.reset_sync)  # moto slows with terminated instances
    saved = os.environ["AIORES_STATE_DIR"]
    os.environ["AIORES_STATE_DIR"] = str(work / name)
    try:
        context = aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
        async with aiores.Session(contexts=[context]) as prep:
            await aiores_ec2(prep, server.url, 1)
        return aiores.Session(contexts=[context])
    finally:
        os.environ["AIORES_STATE_DIR"] = saved


async def aiores_ec2(session: aiores.Session, endpoint: str, n: int) -> None:
    mgr = session.manager(ec2_url(endpoint))
    vms = await mgr.acquire_many(ComputeDescription(image=IMAGE, template=TYPE, ready=None), n)
    await asyncio.gather(*(vm.wait(ResourceState.ACTIVE, timeout=1200) for vm in vms))
    await mgr.destroy(vms)


async def raw_ec2(endpoint: str, n: int) -> None:
    boto = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    config = Config(max_pool_connections=100)
    async with boto.client("ec2", endpoint_url=endpoint, config=config) as ec2:
        answer = await ec2.run_instances(ImageId=IMAGE, InstanceType=TYPE, MinCount=n, MaxCount=n)
        ids = [i["InstanceId"] for i in answer["Instances"]]
        waiting = set(ids)
        while waiting:
            pages = await asyncio.gather(
                *(
                    ec2.describe_instances(InstanceIds=ids[i : i + 1000])
                    for i in range(0, len(ids), 1000)
                )
            )
            for page in pages:
                for reservation in page["Reservations"]:
                    for inst in reservation["Instances"]:
                        if inst["State"]["Name"] == "running":
                            waiting.discard(inst["InstanceId"])
            if waiting:
                await asyncio.sleep(0.5)
        for i in range(0, len(ids), 1000):
            await ec2.terminate_instances(InstanceIds=ids[i : i + 1000])


# -- main ---------------------------------------------------------------------------------
def trees(roots: list[int]) -> list[int]:
    """Every thread of ``roots`` and of all their descendants (Linux sets a nice value
    and a CPU affinity per thread; threads and processes made later inherit them)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry))
    found: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        try:
            found.extend(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            continue
        todo.extend(children.get(pid, ()))
    return found


def renice_trees(roots: list[int], nice: int) -> int:
    """Set the nice value of ``roots`` and all their descendants; how many were set.

    For ``--nice-servers``: the simulated cloud and moto stand for machines elsewhere
    (a cloud's API, its VMs); on this 2-CPU machine they take the CPU the client's
    loop waits for, which is lag no client could avoid.
    """
    done = 0
    for tid in trees(roots):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            done += 1
    return done


def pin_trees(roots: list[int], cpus: set[int]) -> int:
    """Keep ``roots`` and all their descendants on ``cpus``; how many threads were set.

    For ``--pin-servers``: the stand-ins for machines elsewhere get a CPU of their
    own (the last one), as a remote cloud has its own; the client keeps every CPU.
    """
    done = 0
    for tid in trees(roots):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)
            done += 1
    return done


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    session: aiores.Session
    jobs: int
    boots: int
    group: aiores.Group | None
    server: MotoServer | None
    rows: list[Row] = field(default_factory=list)

    async def measure(
        self, scenario: str, method: str, fn: Callable[[], Awaitable[object]]
    ) -> None:
        self.rows.append(await measure(scenario, method, fn, self.args.culprits))

    async def local(self, round_no: int) -> None:
        runs: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("raw asyncio", lambda: raw_local(self.jobs)),
            ("aiores", lambda: aiores_local(self.session, self.jobs)),
        ]
        for name, fn in runs if round_no % 2 == 0 else runs[::-1]:
            await self.measure("local", name, fn)

    async def sim(self, round_no: int) -> None:
        group = self.group
        assert group is not None
        label = "cold" if round_no == 0 else "again"
        await self.measure("sim", f"aiores run {label}", lambda: sim_run(group))
        await self.measure("sim", "aiores run warm", lambda: sim_run(group))

    async def ec2(self, round_no: int) -> None:
        server = self.server
        assert server is not None
        for name in ("raw aioboto3", "aiores")[:: 1 if round_no % 2 == 0 else -1]:
            session = await ec2_session(server, self.work, f"ec2-{round_no}-{name}")
            async with session:
                if name == "aiores":
                    await self.measure(
                        "ec2", name, functools.partial(aiores_ec2, session, server.url, self.boots)
                    )
                else:
                    await self.measure("ec2", name, lambda: raw_ec2(server.url, self.boots))

    async def all(self, round_no: int) -> None:
        server, group = self.server, self.group
        assert server is not None
        assert group is not None
        ec2 = await ec2_session(server, self.work, f"ec2-{round_no}-all")

        async def together() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(aiores_local(self.session, self.jobs))
                tg.create_task(sim_run(group))
                tg.create_task(aiores_ec2(ec2, server.url, self.boots))

        async with ec2:
            await self.measure("all", "aiores, 3 at once", together)


async def main(args: argparse.Namespace) -> int:
    raise_fd_limit()
    scenarios = args.scenarios.split(",")
    jobs, vms, boots = (200, 200, 200) if args.quick else (args.jobs, args.vms, args.boots)
    work = Path(tempfile.mkdtemp(prefix="aiores-lag-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    server: MotoServer | None = None
    print(
        f"loop lag: {jobs} local jobs, {vms} sim VMs, {boots} EC2 boots; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        "load {:.2f} {:.2f} {:.2f} at start".format(*os.getloadavg())
    )
    sim_up = "sim" in scenarios or "all" in scenarios
    ec2_up = "ec2" in scenarios or "all" in scenarios
    rows: list[Row] = []
    try:
        if ec2_up:
            server = MotoServer()
            await asyncio.to_thread(server.start)
        if sim_up:
            await start_cloud(work / "sim")
        async with aiores.Session() as session:
            group: aiores.Group | None = None
            fleet = session.fleet()
            if sim_up:
                start = time.perf_counter()
                fleet.provision("sim://?boot_delay=0.5", ComputeDescription(), vms, tags="lag")
                group = await fleet.wait("lag", timeout=1800)
                assert len(group.resources) == vms, len(group.resources)
                print(f"set-up: {vms} sim VMs ACTIVE in {time.perf_counter() - start:.1f} s")
            roots = [pid for pid in (await cloud_pid(work / "sim"),) if pid is not None]
            if server is not None and server.pid is not None:
                roots.append(server.pid)
            if args.nice_servers is not None:
                count = renice_trees(roots, args.nice_servers)
                nice = args.nice_servers
                print(f"set-up: the sim cloud and moto at nice {nice} ({count} threads)")
            if args.pin_servers:
                last = max(os.sched_getaffinity(0))
                count = pin_trees(roots, {last})
                print(f"set-up: the sim cloud and moto on CPU {last} only ({count} threads)")
            await raw_local(50)  # warm up: the child watcher, the page cache
            bench = Bench(args, work, session, jobs, boots, group, server, rows)
            print(HEADER)
            for round_no in range(args.rounds):
                for scenario in ("local", "sim", "ec2", "all"):
                    if scenario in scenarios:
                        await getattr(bench, scenario)(round_no)
            if group is not None:
                await fleet.deprovision("lag")
    finally:
        if sim_up:
            await stop_cloud(work / "sim")
        if server is not None:
            server.stop()
        await asyncio.to_thread(shutil.rmtree, work, True)
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    met = all(r.met for r in rows if not r.method.startswith("raw"))
    print(f"goal (aiores rows: p99 < 20 ms, max < 100 ms): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="local,sim,ec2,all")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=2000)
    parser.add_argument("--boots", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="200 of each")
    parser.add_argument("--culprits", action="store_true", help="print the slowest callbacks")
    parser.add_argument(
        "--nice-servers",
        type=int,
        default=None,
        metavar="N",
        help="run the sim cloud and moto (stand-ins for remote machines) at nice N",
    )
    parser.add_argument(
        "--pin-servers",
        action="store_true",
        help="keep the sim cloud and moto (stand-ins for remote machines) on the last CPU",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
