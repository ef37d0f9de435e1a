"""Bulk jobs in the manner of DRMAA2: a job array, bounded parallelism, wait, reap.

Run it with:

    python examples/bulk_jobs.py                       # jobs on this machine (local://)
    python examples/bulk_jobs.py ssh://user@host:port  # the same jobs on a machine over SSH

Over SSH the usual credentials apply: the SSH agent or ``~/.ssh/id_*`` to log in, and
the host's key in ``~/.ssh/known_hosts`` (see ``aiores.SSHContext`` for others).
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiores
from aiores import JobDescription, JobState

#: Members of the array, and how many may be unfinished at once.
COUNT = 8
MAX_PARALLEL = 3

#: What every member runs: its index comes in $AIORES_ARRAY_INDEX. Every fourth one
#: fails on purpose (exit status 1), to show how a failure is reported.
MEMBER = """\
i=$AIORES_ARRAY_INDEX
sleep 0.2
echo "square of $i is $((i * i))"
exit $((i % 4 == 3))
"""


async def main(url: str) -> None:
    started = time.perf_counter()
    # journal=None: the jobs are reaped at the end; nothing is left to recover.
    async with aiores.Session(journal=None) as session:
        # The job service is DRMAA2's job session: jobs outlive it (and this program)
        # until reaped; js.get(job.id) finds one again from another program.
        js = session.job_service(url)
        # One call for the whole array; it returns once the first MAX_PARALLEL are
        # accepted and submits the others as earlier ones finish, in index order.
        array = await js.submit_array(
            JobDescription.shell(MEMBER, name="bulk"), count=COUNT, max_parallel=MAX_PARALLEL
        )
        print(f"submitted {len(array)} jobs to {url}, at most {MAX_PARALLEL} at once")

        # Waiting never polls a local job: its exit wakes the waiter.
        states = await array.wait(timeout=120)
        for job, state in zip(array, states, strict=True):
            output = (job.stdout or "").strip()
            print(f"  member {job.index}: {state.name:6} exit {job.exit_code}  {output}")
        done = states.count(JobState.DONE)
        print(f"{done} DONE, {len(states) - done} FAILED in {time.perf_counter() - started:.1f} s")

        # Reaping lets the job service forget a finished job (its record and output).
        for job in array:
            await job.reap()
        known = {job.id for job in await js.list()}
        left = sum(job.id in known for job in array)
        print(f"reaped; the job service still knows {left} of them")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "local://"))
    except aiores.AioresError as exc:  # one line, not a traceback
        sys.exit(f"bulk_jobs.py: {exc}")
