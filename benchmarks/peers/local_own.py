"""The raw asyncio and aiores sides of ``local_side.py``: ``python local_own.py METHOD N``.

Runs under aiores's own virtualenv. ``raw``: N ``/bin/true`` with
``asyncio.create_subprocess_exec`` (pipes, ``communicate``), all at once; ``aiores``:
a journalled ``Session`` (journal and job records under ``$AIORES_STATE_DIR``), N
``submit`` at once on ``local://`` and ``wait`` on all. Prints one line of JSON:
``{"wall": s, "cpu": s, "ok": jobs that exited 0}`` (CPU: ``time.process_time``, all
threads of this process, from the first submit; the session is opened before).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiores


async def raw(n: int) -> tuple[float, float, int]:
    async def one() -> int:
        proc = await asyncio.create_subprocess_exec(
            "/bin/true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await proc.communicate()
        return proc.returncode or 0

    cpu, wall = time.process_time(), time.perf_counter()
    codes = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - wall, time.process_time() - cpu, codes.count(0)


async def via_aiores(n: int) -> tuple[float, float, int]:
    journal = Path(os.environ["AIORES_STATE_DIR"]) / "journal.sqlite"
    async with aiores.Session(journal=journal) as session:
        # Opening the session and its journal is set-up, as the peers' executors are.
        service = session.job_service("local://")
        desc = aiores.JobDescription(executable="/bin/true")
        cpu, wall = time.process_time(), time.perf_counter()
        jobs = await asyncio.gather(*(service.submit(desc) for _ in range(n)))
        states = await asyncio.gather(*(job.wait() for job in jobs))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, sum(state is aiores.JobState.DONE for state in states)


async def main(method: str, n: int) -> None:
    run = {"raw": raw, "aiores": via_aiores}[method]
    wall, cpu, ok = await run(n)
    print(json.dumps({"wall": wall, "cpu": cpu, "ok": ok}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
