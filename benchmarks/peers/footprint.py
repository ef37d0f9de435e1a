"""Memory per Compute and per Job object in a session: ``python footprint.py [--count 10000]``.

With the in-memory ``fake://`` backend (:class:`aiores.testing.FakePlugin`: no cloud,
no process) and a session without journal, traces allocations with ``tracemalloc``
while ``acquire_many`` makes ``--count`` Compute objects, then while ``--count`` jobs
are submitted (left RUNNING), and divides the growth by the count. Allocations made
by the fake backend itself (``aiores/testing.py``: its own records of the resources
and jobs) are left out, so the figure is what a session holds per object. Prints
bytes per object and the load average; ``--quick`` counts 1000.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import aiores  # noqa: E402
import aiores.testing  # noqa: E402

FAKE_BACKEND = tracemalloc.Filter(False, "*/aiores/testing.py", all_frames=False)


def held(before: tracemalloc.Snapshot) -> tuple[int, int]:
    """Bytes allocated since ``before`` and still held: without the fake backend's, all."""
    gc.collect()
    after = tracemalloc.take_snapshot()
    own = after.filter_traces([FAKE_BACKEND]).compare_to(
        before.filter_traces([FAKE_BACKEND]), "filename"
    )
    return sum(s.size_diff for s in own), sum(
        s.size_diff for s in after.compare_to(before, "filename")
    )


async def main(count: int) -> None:
    fake = aiores.testing.FakePlugin()
    aiores.register_adaptor(fake)
    try:
        async with aiores.Session(journal=None) as session:
            manager = session.manager("fake://")
            service = session.job_service("fake://")
            await manager.acquire_many(aiores.ComputeDescription(), 1)  # warm-up
            await service.submit(aiores.JobDescription(executable="/bin/true"))
            gc.collect()
            tracemalloc.start(1)
            before = tracemalloc.take_snapshot()
            vms = await manager.acquire_many(aiores.ComputeDescription(), count)
            vm_own, vm_all = held(before)
            before = tracemalloc.take_snapshot()
            desc = aiores.JobDescription(executable="/bin/true")
            jobs = await asyncio.gather(*(service.submit(desc) for _ in range(count)))
            job_own, job_all = held(before)
            tracemalloc.stop()
            assert len(vms) == len(jobs) == count
    finally:
        aiores.unregister_adaptor(fake.name)
    print(f"{count} objects each, Python {sys.version.split()[0]}")
    for name, own, every in (("Compute", vm_own, vm_all), ("Job", job_own, job_all)):
        print(
            f"{name + ':':<8} {own / count:.0f} bytes ({own / count / 1024:.2f} KiB) per object "
            f"in the session; {every / count / 1024:.2f} KiB with the fake backend's records"
        )
    print("load average (1/5/15 min): " + " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1000 objects")
    args = parser.parse_args()
    asyncio.run(main(1000 if args.quick else args.count))
