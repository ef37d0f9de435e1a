"""What following spot interruption notices costs the client: metadata over SSH vs events.

Starts a sim cloud of its own (temporary directory: its machines stand in for spot
instances, their commands run on this host), a small IMDSv2 server on loopback (the
notice path answers 404: no notice, as nearly always) and a moto server (EventBridge
and SQS). For N machines followed during S seconds, in turn:

- idle: nothing followed (the baseline: the session, its watcher, the ticker);
- metadata: ``interruptions=metadata``'s poller (``aiores_ec2._spot.Interruptions``)
  reads every machine's notice path over its pooled SSH connection every
  ``--interval`` seconds (``curl`` on the machine, two requests);
- events: ``interruptions=events``'s queue (``aiores_ec2._events.EventQueue``) makes
  its rule and queue and long-polls it (``WaitTimeSeconds`` 20) for all N.

Columns: this process's CPU seconds (``time.process_time``; the machines' side, sshd
and curl, runs in the cloud's processes and is not counted: on EC2 it is the
instances' own), the reads or requests made, CPU milliseconds per minute above idle
(all, and per machine; the events' figure includes making and removing the rule and
queue once per run) and the event loop's lag p99 (10 ms ticker). Rounds alternate
the order of the three; the last lines give medians and the load average::

    .venv/bin/python benchmarks/spot_notices.py [--machines 50] [--seconds 30]
        [--interval 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from sim_boot import Lag  # type: ignore[import-not-found]  # a script beside this one

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.adaptor import ResourceInfo
from aiores_ec2._aws import Target, open_api
from aiores_ec2._events import EVENT_BUCKETS, SQS_BUCKETS, EventNotices, EventQueue
from aiores_ec2._spot import Interruptions
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer
from aiores_sim import start_cloud, stop_cloud

URL = "sim://?boot_delay=0.05"


@dataclass
class Row:
    method: str
    cpu: float
    calls: int
    lag_p99: float


class Imds:
    """IMDSv2's token and spot notice paths; the notice path answers 404."""

    def __init__(self) -> None:
        self.reads = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Imds:
        async def token(request: web.Request) -> web.Response:
            return web.Response(text="token")

        async def action(request: web.Request) -> web.Response:
            self.reads += 1
            return web.Response(status=404, text="Not Found")

        app = web.Application()
        app.router.add_put("/latest/api/token", token)
        app.router.add_get("/latest/meta-data/spot/instance-action", action)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Counted:
    """An Api whose calls are counted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    async def open(self) -> None:
        await self.inner.open()

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        self.calls += 1
        result: dict[str, Any] = await self.inner.call(action, **params)
        return result


def spawner(
    session: aiores.Session, tasks: list[asyncio.Task[None]]
) -> Callable[[Callable[[], Awaitable[None]], str], object]:
    def spawn(fn: Callable[[], Awaitable[None]], name: str) -> object:
        task = session.spawn(fn, name=name)
        tasks.append(task)
        return task

    return spawn


async def measure(
    method: str,
    session: aiores.Session,
    infos: list[ResourceInfo],
    imds: Imds,
    moto: MotoServer,
    seconds: float,
    interval: float,
) -> Row:
    tasks: list[asyncio.Task[None]] = []
    lag = Lag()
    calls: Callable[[], int] = lambda: 0  # noqa: E731
    queue: EventQueue | None = None
    lag.start()
    cpu = time.process_time()
    if method == "metadata":
        reads = imds.reads
        poller = Interruptions(
            metadata=imds.url,
            interval=interval,
            clock=session.clock,
            runner=session.command_runner,
            publish=lambda info: None,
            spawn=spawner(session, tasks),
        )
        for info in infos:
            poller.watch(info)
        calls = lambda: imds.reads - reads  # noqa: E731
    elif method == "events":
        t = Target("events", "us-east-1", moto.url, ACCESS_KEY, SECRET_KEY)
        events = Counted(
            open_api(session, t, buckets=EVENT_BUCKETS, cost=lambda a: {"events": 1}, enabled=True)
        )
        sqs = Counted(
            open_api(
                session,
                Target("sqs", "us-east-1", moto.url, ACCESS_KEY, SECRET_KEY),
                buckets=SQS_BUCKETS,
                cost=lambda a: {"sqs": 1},
                enabled=True,
            )
        )
        queue = EventQueue(
            events=events,
            sqs=sqs,
            name=f"aiores-spot-{session.id}-bench",
            tags={"aiores:managed": "1"},
            cleanups=session.cleanups,
            clock=session.clock,
            spawn=spawner(session, tasks),
        )
        notices = EventNotices(queue, clock=session.clock, publish=lambda info: None)
        for info in infos:
            notices.watch(info)
        calls = lambda: events.calls + sqs.calls  # noqa: E731
    await asyncio.sleep(seconds)
    made = calls()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # the events' removal included
    used = time.process_time() - cpu
    p99, _ = await lag.stop()
    return Row(method, used, made, p99)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="aiores-spot-bench-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    moto = MotoServer()
    await asyncio.to_thread(moto.start)
    await start_cloud(work / "sim")
    rows: list[Row] = []
    try:
        async with aiores.Session(journal=None) as session, Imds() as imds:
            mgr = session.manager(URL)
            vms = await mgr.acquire_many(ComputeDescription(template="tiny"), args.machines)
            await asyncio.gather(*(vm.wait(ResourceState.ACTIVE, timeout=120) for vm in vms))
            infos = [
                ResourceInfo(
                    id=f"i-{n:017x}",
                    state=ResourceState.ACTIVE,
                    state_detail="running",
                    rtype="compute",
                    access=vm.access,
                    extra={"lifecycle": "spot"},
                )
                for n, vm in enumerate(vms)
            ]
            # The AWS clients' models are built once per process (half a second of CPU
            # each, in a thread): not what following notices costs.
            await measure("events", session, infos, imds, moto, 1.0, args.interval)
            methods = ["idle", "metadata", "events"]
            for r in range(args.rounds):
                order = methods if r % 2 == 0 else methods[::-1]
                for method in order:
                    row = await measure(
                        method, session, infos, imds, moto, args.seconds, args.interval
                    )
                    rows.append(row)
                    print(
                        f"round {r + 1} {method:9s} cpu {row.cpu:6.2f} s  calls {row.calls:6d}"
                        f"  lag p99 {row.lag_p99 * 1000:6.1f} ms",
                        flush=True,
                    )
            await mgr.destroy(vms)
    finally:
        await stop_cloud(work / "sim")
        await asyncio.to_thread(moto.stop)
    idle = statistics.median(r.cpu for r in rows if r.method == "idle")
    minutes = args.seconds / 60
    print(f"\n{args.machines} machines, {args.seconds:g} s each, interval {args.interval:g} s")
    print(
        f"{'method':9s} {'cpu (median)':>12s} {'spread':>13s} {'calls':>6s}"
        f" {'ms/min above idle':>18s} {'per machine':>12s} {'lag p99':>9s}"
    )
    for method in ("idle", "metadata", "events"):
        mine = [r for r in rows if r.method == method]
        cpu = statistics.median(r.cpu for r in mine)
        above = (cpu - idle) * 1000 / minutes
        low, high = min(r.cpu for r in mine), max(r.cpu for r in mine)
        lag = statistics.median(r.lag_p99 for r in mine) * 1000
        print(
            f"{method:9s} {cpu:10.2f} s {low:6.2f}-{high:5.2f} s"
            f" {statistics.median(r.calls for r in mine):6.0f} {above:18.0f}"
            f" {above / args.machines:12.1f} {lag:7.1f} ms"
        )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    if arguments.machines < 1 or arguments.seconds <= 0 or arguments.interval <= 0:
        sys.exit("--machines, --seconds and --interval must be positive")
    asyncio.run(main(arguments))
