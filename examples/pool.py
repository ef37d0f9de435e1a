"""An elastic pool on the simulated cloud: 30 commands, machines added and given back.

Run it with:

    python examples/pool.py [CLOUD_URL]

CLOUD_URL is ``sim://`` by default; its query sets the simulated faults, e.g.
``"sim://?preempt_after=2&preempt_notice=2"`` to see machines revoked mid-run and
their work requeued elsewhere (nothing is lost, nothing runs twice at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import aiores
from aiores import ComputeDescription


async def main(cloud: str) -> None:
    started = time.perf_counter()
    desc = ComputeDescription(image="sim-linux", template="tiny")
    commands = [f'sleep 0.{i % 7 + 2}; echo "task {i} on $(uname -n)"' for i in range(30)]
    # Leaving this block releases every machine the pool holds, also when cancelled.
    async with (
        aiores.Session() as session,
        session.pool(cloud, desc, min=1, max=5, idle_timeout=2, batch=3) as pool,
    ):

        async def report() -> None:
            async for event in pool.events():
                if event.kind in ("acquire", "release", "revoked", "requeue"):
                    what = event.resource.native_id if event.resource else f"{event.count} machines"
                    print(f"  pool: {event.kind} {what} {event.detail}".rstrip())

        reporter = asyncio.ensure_future(report())
        failed = 0
        async with contextlib.aclosing(pool.map(commands)) as results:
            async for index, result in results:
                failed += not result.ok
                print(f"{index:2} {result.stdout.strip() or result.failure()}")
        stats = pool.stats()
        print(
            f"{stats.done} done, {failed} failed, {stats.requeued} requeued, "
            f"{stats.revoked} revoked, {stats.machine_seconds:.0f} machine-seconds, "
            f"{time.perf_counter() - started:.1f} s"
        )
    await reporter  # the event stream ends with the pool


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "sim://"))
