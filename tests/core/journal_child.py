"""A program that journals some work, then stops mid-call until killed (for test_journal)."""

from __future__ import annotations

import asyncio
import sys

import aiores
from aiores import ComputeDescription, JobDescription, JobState
from aiores.testing import FakePlugin


async def main(path: str) -> None:
    fake = FakePlugin()
    aiores.register_adaptor(fake)
    async with aiores.Session(journal=path) as session:
        mgr = session.manager("fake://")
        js = session.job_service("fake://")
        # Finished work: one acquire and one job that ran to the end.
        done_vm = await mgr.acquire(ComputeDescription(image="fake-linux", tags={"done"}))
        job = await js.submit(JobDescription(executable="/bin/true"))
        fake.job_adaptors[0].finish(job.native_id or "", 0)
        await job.wait(JobState.DONE)
        # Work in flight: calls that the backend has received but not answered.
        reached = fake.cloud.pause_at("acquire:after")
        submitted = fake.cloud.pause_at("submit:after")
        tasks = [
            asyncio.ensure_future(
                mgr.acquire_many(ComputeDescription(image="fake-linux", tags={"inflight"}), 4)
            ),
            asyncio.ensure_future(
                js.submit(JobDescription(executable="/bin/sleep", arguments=["9"]))
            ),
        ]
        await reached.wait()
        await submitted.wait()
        await session.journal.flush()  # type: ignore[union-attr]
        print("READY", done_vm.id, job.id, flush=True)
        await asyncio.gather(*tasks)  # never returns: the test kills us here


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
