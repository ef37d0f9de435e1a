"""A second program for the job session tests: reopens a job session by name.

``python child.py NAME`` prints one JSON line: the session's jobs and states as it sees
them, the names listed, and what opening the name with another URL said; then it submits
one job into the session, waits for it and prints its id.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiores
from aiores import JobDescription, JobState


async def main(name: str) -> None:
    async with aiores.Session() as session:
        js = await session.job_session(name)
        seen = {job.id: job.state.name for job in await js.jobs()}
        running = [job.id for job in await js.jobs(state=JobState.RUNNING)]
        try:
            await session.job_session(name, "local://?max_running=3")
            other = "opened"
        except aiores.BadParameter as exc:
            other = str(exc)
        names = await session.job_session_names()
        job = await js.submit(JobDescription(executable="/bin/sh", arguments=["-c", "exit 7"]))
        await job.wait(timeout=20)
        print(
            json.dumps(
                {
                    "url": str(js.url),
                    "seen": seen,
                    "running": running,
                    "other": other,
                    "names": names,
                    "mine": job.id,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
