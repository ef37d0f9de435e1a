"""A second program for the slurm:// tests: submits through aiores, then ends.

``python child.py URL submit``: submits a running job and a held one, prints
``ids <running> <held>`` and ends (its session closes; the jobs run on).
``python child.py URL many N``: submits N sleeping jobs at once and prints
``submitting`` first (the test kills it with SIGKILL mid-way).
``python child.py URL walltime``: submits a job that outlives its walltime.
"""

from __future__ import annotations

import asyncio
import sys

import aiores


async def main(url: str, what: str, count: int) -> None:
    sleeper = aiores.JobDescription(executable="/bin/sleep", arguments=["120"])
    async with aiores.Session() as session:
        js = session.job_service(url)
        if what == "submit":
            running = await js.submit(sleeper)
            held = await js.submit(sleeper, hold=True)
            print("ids", running.id, held.id, flush=True)
        elif what == "walltime":
            job = await js.submit(sleeper.replace(walltime=1))
            print("ids", job.id, flush=True)
        elif what == "many":
            print("submitting", flush=True)
            await asyncio.gather(*(js.submit(sleeper) for _ in range(count)))
            print("submitted", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
