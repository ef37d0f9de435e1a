"""Jobs on the local machine with aiores, top to bottom.

Run it with:  python examples/local_jobs.py
"""

from __future__ import annotations

import asyncio
import time

import aiores
from aiores import JobDescription, JobState, ResourceState


async def main() -> None:
    started = time.perf_counter()
    # journal=None: this example leaves nothing behind to recover.
    async with aiores.Session(journal=None) as session:
        # The local host as a resource: the same calls as for a cloud VM.
        mgr = session.manager("local://")
        async with mgr.acquired(aiores.ComputeDescription(tags={"demo"})) as host:
            await host.wait(ResourceState.ACTIVE, timeout=10)
            result = await host.run(["uname", "-sr"])
            print(f"{host.id}: {result.stdout.strip()} (exit {result.exit_status})")

            # A job service on the host: submit, wait, read the captured output.
            js = host.job_service()
            job = await js.submit(
                JobDescription(executable="/bin/echo", arguments=["hello from", "a job"])
            )
            print(f"{job.id}: {await job.wait(timeout=10)} -> {job.stdout!r}")

            # An array of 20 jobs, at most 5 at once, each with its index.
            array = await js.submit_array(
                JobDescription.shell("sleep 0.2; echo $AIORES_ARRAY_INDEX"),
                count=20,
                max_parallel=5,
            )
            states = await array.wait(timeout=60)
            outputs = sorted(int(j.stdout or "-1") for j in array)
            print(
                f"array: {states.count(JobState.DONE)}/20 DONE, indices {outputs[0]}..{outputs[-1]}"
            )

            # Cancelling a long job: TERM, then KILL after a grace period.
            sleeper = await js.submit(JobDescription(executable="/bin/sleep", arguments=["60"]))
            await sleeper.cancel()
            print(f"{sleeper.id}: {await sleeper.wait(timeout=30)}")
    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    asyncio.run(main())
